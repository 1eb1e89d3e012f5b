"""An Optuna (TPE) search under Ray Tune, with ASHA on the per-epoch reports, over the
labeler's parameter (tau / k / temperature), lambda, T and the learning rate.

    python studies/search.py --dataset digits --trials 24                 # objective: ACC (uses labels)
    python studies/search.py --dataset digits --objective label_free      # no labels needed
    python studies/search.py --debug

Re-running the same command resumes: the Optuna study lives in a journal file in the storage
(safe with concurrent workers) and the Ray Tune experiment is restored. The best configuration
is printed and written to <storage>/search/best-<name>.json.
"""
from lsdc.study import search_main

if __name__ == "__main__":
    raise SystemExit(search_main())
