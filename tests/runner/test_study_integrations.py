"""Studies with Optuna and callbacks as their users know them (issue 14): one study's
--smoke-test, sqlite Optuna storage with user attributes and seed averaging, an ablation
through Optuna's GridSampler, and --callback mlflow plus a Python callback (on the session's
two-cell run, conftest.py)."""
import os

import pytest

from conftest import TINY_STUDY_ARGS
from lsdc.records import read_records
from lsdc.storage import Storage
from lsdc.studies import STUDIES
from lsdc.study import Study, Variant, main, search_main

TINY = TINY_STUDY_ARGS          # no pretraining (pretraining through Ray: the smoke test below)
TWO_CELLS = Study(name="two", title="two cells", variants=(Variant("a", {"labeler": "knn"}),
                                                            Variant("b", {"labeler": "cosine"})))


def test_smoke_test_runs_the_whole_study_through_ray_then_dry_run_marks_it_done(joined, tmp_path, capsys):
    storage = str(tmp_path / "res")
    assert main(STUDIES["seeds"], ["--smoke-test", "--storage", storage, "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "1 planned on digits" in out and "done. Tables" in out
    recs, _ = read_records(Storage(storage), ["seeds"])
    assert len(recs) == 1 and recs[0]["config"]["epochs"] == 2 and recs[0]["config"]["width"] == 0.125
    assert main(STUDIES["seeds"], ["--smoke-test", "--storage", storage, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "1 finished already" in out and "  done  " + recs[0]["key"] in out


def test_search_in_sqlite_with_user_attributes_and_seeds_averaged(joined, tmp_path, capsys):
    import optuna
    storage, db = str(tmp_path / "res"), tmp_path / "optuna.db"
    url = f"sqlite:///{db}"
    assert search_main(["--dataset", "digits", "--epochs", "2", "--set", "pretrain=none", "--set", "width=0.125",
                        "--set", "batch_size=256", "--quiet", "--storage", storage, "--trials", "2", "--no-asha",
                        "--max-concurrent", "2", "--seeds", "0,1", "--optuna-storage", url, "--sampler", "random"]) == 0
    out = capsys.readouterr().out
    name = next(s.study_name for s in optuna.get_all_study_summaries(url))
    df = optuna.load_study(study_name=name, storage=url).trials_dataframe()
    assert len(df) == 2 and (df["state"] == "COMPLETE").all()
    for col in ("user_attrs_acc", "user_attrs_nmi", "user_attrs_ari", "user_attrs_label_free", "user_attrs_loss"):
        assert col in df and df[col].between(-1e9, 1e9).all()
    # the value Optuna holds is the mean over the two seeds of each trial's records
    recs, _ = read_records(Storage(storage), ["search"])
    assert len(recs) == 4 and sorted(r["seed"] for r in recs) == [0, 0, 1, 1]
    by_cfg = {}
    for r in recs:
        by_cfg.setdefault((r["config"]["lr"], r["config"]["knn_k"]), []).append(r["final"]["acc"])
    means = sorted(sum(v) / 2 for v in by_cfg.values())
    assert sorted(df["user_attrs_acc"]) == pytest.approx(means) and sorted(df["value"]) == pytest.approx(means)
    assert "seeds [0, 1]" in out


def test_ablation_through_optuna_same_records_as_the_default_with_mlflow_and_a_python_callback(
        joined, tiny_study_run, tmp_path):
    """The default run (grid) is the session's two-cell run (conftest.py), which also carries
    --callback mlflow (an sqlite tracking URI) and a Python callback; the same cells through
    Optuna's GridSampler (--searcher optuna) give the same trials."""
    import optuna
    mlflow = pytest.importorskip("mlflow", reason="mlflow is not installed (pip install 'lsdc[mlflow]')")
    run = tiny_study_run
    assert run.code == 0 and [v.overrides for v in run.study.variants] == [v.overrides for v in TWO_CELLS.variants]
    assert len(run.seen) == 8 and all(0 < x <= 1 for x in run.seen)       # 4 trials x 2 epochs
    mlflow.set_tracking_uri(run.mlflow_uri)
    runs = mlflow.search_runs(experiment_names=["lsdc-test"])
    assert len(runs) == 4 and runs["metrics.acc"].between(0, 1).all()
    assert (runs["metrics.training_iteration"] == 2).all()

    b = str(tmp_path / "optuna")
    assert main(TWO_CELLS, TINY + ["--seeds", "0", "--storage", b, "--searcher", "optuna"]) == 0
    ka = {r["key"] for r in read_records(Storage(run.storage), [run.study.name])[0] if r["seed"] == 0}
    kb = {r["key"] for r in read_records(Storage(b), ["two"])[0]}
    assert len(ka) == 2 and ka == kb
    folder = os.path.join(b, "two", "optuna")
    journal = next(f for f in os.listdir(folder) if f.endswith(".journal"))
    st = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(os.path.join(folder, journal)))
    df = optuna.load_study(study_name=journal[:-len(".journal")], storage=st).trials_dataframe()
    assert sorted(df["params_trial"]) == sorted(kb) and df["user_attrs_acc"].between(0, 1).all()
