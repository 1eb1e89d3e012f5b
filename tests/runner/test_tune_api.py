"""lsdc from a user's own Ray Tune code: lsdc.tune.trainable over a flat config, under a
grid, and under the user's own ASHA scheduler and OptunaSearch (issue 14)."""

import pytest

ray = pytest.importorskip("ray")
from ray import tune  # noqa: E402

import lsdc.tune  # noqa: E402
from lsdc.records import read_records  # noqa: E402
from lsdc.storage import Storage  # noqa: E402

SMALL = {"width": 0.125, "pretrain_epochs": 1}     # speed only: the README example without them runs as well


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """The user's backbone cache, shared by this module's Tuners (a backbone pretrained once)."""
    return str(tmp_path_factory.mktemp("tune-cache"))


@pytest.fixture
def local_ray(joined, monkeypatch):
    """The user's own ray.init(): here, a connection to the session's shared cluster (conftest.py)."""
    monkeypatch.setenv("RAY_AIR_NEW_OUTPUT", "0")
    yield


def test_the_readme_tuner_example_runs_and_the_resultgrid_holds_acc(local_ray, cache, tmp_path):
    trainable = tune.with_parameters(lsdc.tune.trainable, cache_dir=cache,
                                     storage=str(tmp_path / "res"), study="mine")
    tuner = tune.Tuner(trainable, param_space={"dataset": "digits", "epochs": 2, **SMALL,
                                               "batch_size": tune.grid_search([64, 128])},
                       run_config=tune.RunConfig(storage_path=str(tmp_path / "tune"), verbose=0))
    results = tuner.fit()
    assert len(results) == 2 and not results.errors
    df = results.get_dataframe()
    assert sorted(df["config/batch_size"]) == [64, 128]
    for r in results:
        assert 0 < r.metrics["acc"] <= 1 and r.metrics["epoch"] == 2
        assert {"nmi", "ari", "loss", "label_free"} <= set(r.metrics)
        assert r.checkpoint is not None
    recs, bad = read_records(Storage(str(tmp_path / "res")), ["mine"])
    assert not bad and sorted(r["config"]["batch_size"] for r in recs) == [64, 128]


def test_without_storage_no_record_and_an_unknown_key_is_named(local_ray, cache, tmp_path):
    trainable = tune.with_parameters(lsdc.tune.trainable, cache_dir=cache)
    results = tune.Tuner(trainable, param_space={"epochs": 1, **SMALL, "batch_size": 64, "no_such_field": 1},
                         run_config=tune.RunConfig(storage_path=str(tmp_path / "tune"), verbose=0)).fit()
    assert results.errors and "no_such_field" in str(results.errors[0])


def test_under_the_users_own_asha_and_optuna_search(local_ray, cache, tmp_path):
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch
    trainable = tune.with_parameters(lsdc.tune.trainable, cache_dir=cache)
    tuner = tune.Tuner(
        trainable,
        param_space={"dataset": "digits", "epochs": 3, **SMALL, "batch_size": 256,
                     "lr": tune.loguniform(0.01, 0.2), "knn_k": tune.randint(5, 20)},
        tune_config=tune.TuneConfig(metric="acc", mode="max", num_samples=3, reuse_actors=True,
                                    scheduler=ASHAScheduler(max_t=3, grace_period=1, reduction_factor=2),
                                    search_alg=OptunaSearch(seed=0)),
        run_config=tune.RunConfig(storage_path=str(tmp_path / "tune"), verbose=0))
    results = tuner.fit()
    assert len(results) == 3 and not results.errors
    assert all(0 < r.metrics["acc"] <= 1 for r in results)
    best = results.get_best_result()
    assert 0.01 <= best.config["lr"] <= 0.2 and best.config["batch_size"] == 256
