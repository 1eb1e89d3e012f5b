"""A tiny study for the fault-injection tests, run as its own process: python tests/runner/fault_study.py ..."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from lsdc.study import Study, Variant, main  # noqa: E402

STUDY = Study(name="faults", title="fault injection",
              # 'wild' diverges at once, so its records exist while the others are mid-way
              variants=(Variant("wild", {"lr": 1e12, "lam": 1e6, "rampup": 0}, seeds=1),
                        Variant("knn", {"labeler": "knn"}), Variant("cosine", {"labeler": "cosine"})))
ARGS = ["--dataset", "digits", "--pretrain-epochs", "1", "--set", "width=0.125", "--set", "batch_size=256",
        "--checkpoint-every", "1"]

if __name__ == "__main__":
    raise SystemExit(main(STUDY, ARGS + sys.argv[1:]))
