"""Table 3: impact of the number of trainable weights (SNE).

Trainable from macro block #2 (layer3+layer4+head), #3 (layer4+head), #4 (head only).

    python studies/block_depth.py                      # CIFAR-10 (add --dataset cifar100-20, ...)
    python studies/block_depth.py --dataset digits     # the whole study on a laptop CPU
    python studies/block_depth.py --debug              # one tiny trial in-process, seconds
"""
from lsdc.studies import BLOCK_DEPTH
from lsdc.study import main

if __name__ == "__main__":
    raise SystemExit(main(BLOCK_DEPTH))
