"""Supplement Table 5: impact of the batch size on LSD-C (SNE labels).

    python studies/batch_size.py                       # CIFAR-10, 10 seeds at 256, 2 elsewhere
    python studies/batch_size.py --dataset digits      # the whole study on a laptop CPU, in minutes
    python studies/batch_size.py --debug               # one tiny trial in-process, seconds
"""
from lsdc.studies import BATCH_SIZE
from lsdc.study import main

if __name__ == "__main__":
    raise SystemExit(main(BATCH_SIZE))
