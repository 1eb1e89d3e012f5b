"""Labelers: cosine / SNE / kNN pairwise labels.

Each labeler with its Table 1 parameters for the dataset (columns without them are skipped).

    python studies/labeler.py                      # CIFAR-10 (add --dataset cifar100-20, ...)
    python studies/labeler.py --dataset digits     # the whole study on a laptop CPU
    python studies/labeler.py --debug              # one tiny trial in-process, seconds
"""
from lsdc.studies import LABELER
from lsdc.study import main

if __name__ == "__main__":
    raise SystemExit(main(LABELER))
