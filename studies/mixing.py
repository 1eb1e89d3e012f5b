"""Mixing: RICAP target (reference vs corrected), MixUp, none (ours).

RICAP with the reference code's target mixing (permutes the clean index) and with the corrected one; MixUp with weight decay 1e-4 as the supplement says; no mixing. No published work has measured the reference code's choice.

    python studies/mixing.py                      # CIFAR-10 (add --dataset cifar100-20, ...)
    python studies/mixing.py --dataset digits     # the whole study on a laptop CPU
    python studies/mixing.py --debug              # one tiny trial in-process, seconds
"""
from lsdc.studies import MIXING
from lsdc.study import main

if __name__ == "__main__":
    raise SystemExit(main(MIXING))
