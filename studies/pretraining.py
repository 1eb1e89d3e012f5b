"""Table 4: impact of the self-supervised method (trainable from block #3).

Each pretraining (same augmentation for all, as the supplement) followed by k-means and by LSD-C (SNE).

    python studies/pretraining.py                      # CIFAR-10 (add --dataset cifar100-20, ...)
    python studies/pretraining.py --dataset digits     # the whole study on a laptop CPU
    python studies/pretraining.py --debug              # one tiny trial in-process, seconds
"""
from lsdc.studies import PRETRAINING
from lsdc.study import main

if __name__ == "__main__":
    raise SystemExit(main(PRETRAINING))
