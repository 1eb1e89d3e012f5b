"""Numerical precision: bf16, TF32 and fp32 side by side.

The dataset's preset in each precision: ACC, images/s, and how the pairwise labels agree with
those the same model gives in fp32 (per epoch, on a fixed sample: fraction of pairs that differ,
Jaccard index of the positive pairs). fp32 (the reference code's numerics) is the default; on
CPUs TF32 computes in fp32 (its agreement is then exactly 1).

    python studies/precision.py                      # CIFAR-10 on a GPU (add --dataset cifar100-20, ...)
    python studies/precision.py --dataset digits --epochs 3 --pretrain-epochs 2 --seeds 0   # a CPU
    python studies/precision.py --debug              # one tiny bf16 trial in-process
"""
from lsdc.studies import PRECISION
from lsdc.study import main

if __name__ == "__main__":
    raise SystemExit(main(PRECISION))
