"""Headline configuration over ten seeds.

The dataset's preset (Table 1, kNN labels where the table gives k) over 10 seeds; also the source of Figure 1.

    python studies/seeds.py                      # CIFAR-10 (add --dataset cifar100-20, ...)
    python studies/seeds.py --dataset digits     # the whole study on a laptop CPU
    python studies/seeds.py --debug              # one tiny trial in-process, seconds
"""
from lsdc.studies import SEEDS
from lsdc.study import main

if __name__ == "__main__":
    raise SystemExit(main(SEEDS))
