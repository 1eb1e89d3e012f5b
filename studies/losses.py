"""Table 2: impact of the different losses.

k-means on the pretrained features; LSD-C (kNN); without the MSE term; with a non-linear head.

    python studies/losses.py                      # CIFAR-10 (add --dataset cifar100-20, ...)
    python studies/losses.py --dataset digits     # the whole study on a laptop CPU
    python studies/losses.py --debug              # one tiny trial in-process, seconds
"""
from lsdc.studies import LOSSES
from lsdc.study import main

if __name__ == "__main__":
    raise SystemExit(main(LOSSES))
