import os
import subprocess
import sys

import pytest

from lsdc.config import Env, make_config
from lsdc.planning import Study, Variant


@pytest.fixture(scope="session")
def env(tmp_path_factory):
    """A private backbone cache shared by the session's tests (pretraining is paid once)."""
    root = tmp_path_factory.mktemp("lsdc")
    return Env(data_root=str(root / "data"), cache_dir=str(root / "cache"))


@pytest.fixture(scope="session")
def debug_store(tmp_path_factory):
    """One storage for the session's ``--debug`` runs: they write no records, and the backbone
    of the debug preset (the same for most studies) is pretrained once, not once per test."""
    return str(tmp_path_factory.mktemp("debug-store"))


def tiny(**overrides):
    """A digits config that trains in a second or two on a laptop CPU."""
    base = dict(epochs=2, pretrain_epochs=1, width=0.125, batch_size=256, device="cpu")
    base.update(overrides)
    return make_config("digits", **base)


@pytest.fixture
def tiny_cfg():
    return tiny


SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


def pytest_collection_modifyitems(config, items):
    """tests/unit: the maths, configs, keys and tables, fast (``-m unit``, under a minute), and,
    marked ``pipeline`` there, short real runs in-process (a trial, a command, the real data
    copies, a browser), no Ray (``-m pipeline``). tests/runner: short real runs on Ray clusters
    (``-m ray``). ``python3 -m pytest -q`` runs all three."""
    import pytest
    for item in items:
        parts = str(item.fspath).split(os.sep)
        if "unit" in parts:
            if item.get_closest_marker("pipeline") is None:
                item.add_marker(pytest.mark.unit)
        else:
            item.add_marker(pytest.mark.ray)
    _shared_cluster_tests_first(items)


# ------------------------------------------------------------------ the Ray tests' shared cluster
# One Ray cluster for the session's Ray tests.
# 
# Starting a local Ray costs seconds (several on 2 cores), and so does a fresh job's first
# worker. Most tests here run a study in-process or as a child process; they join one shared
# cluster instead of starting their own:
# 
# - ``joined``: this process is connected to the shared cluster (``ray.init(address=...)``, once,
#   kept between tests). lsdc's runner then uses that connection and leaves it open (as for any
#   caller that initialized Ray itself), so its workers, with torch imported, serve the next test.
# - ``shared_address``: the address, for child processes (``--address``).
# 
# Tests that check what lsdc does with a Ray it starts itself (no process left behind, the
# session folder removed, Ctrl-C, plugins reaching the workers through the runtime environment,
# a whole process group killed with its Ray, a soak that counts processes, clusters of their
# own) ask for neither, and the autouse fixture below disconnects this process first,
# so that their run starts its own Ray as a user's would. They run after the tests that join:
# once this process has started and stopped a local Ray, Ray (2.60) no longer creates actors
# for it on another cluster ("cancelled before it started running").


RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "runner")
SHARED = ("joined", "shared_address", "join")


def _shared_cluster_tests_first(items):
    """Within tests/runner, the tests on the shared cluster first (a stable sort: file order kept)."""
    slots = [i for i, it in enumerate(items) if str(it.fspath).startswith(RUNNER + os.sep)]
    mine = [items[i] for i in slots]
    mine.sort(key=lambda it: 0 if set(getattr(it, "fixturenames", ())) & set(SHARED) else 1)
    for i, it in zip(slots, mine):
        items[i] = it


def _lock_file(tmp_path_factory):
    """One lock file for every pytest process of this run (xdist's workers share the parent of
    their base temporary folders)."""
    return str(tmp_path_factory.getbasetemp().parent / "lsdc-ray-tests.lock")


@pytest.fixture(scope="session")
def shared_address(tmp_path_factory):
    import fcntl
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    lock = open(_lock_file(tmp_path_factory), "a")
    fcntl.flock(lock, fcntl.LOCK_SH)          # not while an exclusive test counts Ray's processes
    proc = subprocess.Popen([sys.executable, os.path.join(RUNNER, "shared_cluster.py"),
                             os.environ.get("LSDC_TEST_SHARED_CPUS", "2")], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
    address = proc.stdout.readline().strip()
    lock.close()
    assert address, "the shared Ray cluster did not start"
    yield address
    import ray
    if ray.is_initialized():
        ray.shutdown()
    proc.stdin.close()
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="session")
def join(shared_address):
    """A function that connects this process to the shared cluster (for module fixtures)."""
    def connect():
        import ray
        if not ray.is_initialized():
            ray.init(address=shared_address, logging_level="error", log_to_driver=False)
        return shared_address
    return connect


# the two-cell study of `tiny_study_run` and its arguments (2 epochs, no pretraining), for the tests
# that run it again or beside it (test_orchestrate.py, test_study_integrations.py)
TINY_STUDY_ARGS = ["--dataset", "digits", "--epochs", "2", "--set", "pretrain=none", "--set", "width=0.125",
                   "--set", "batch_size=256", "--quiet"]
TINY_STUDY = Study(name="tiny", title="a tiny study", variants=(Variant("a", {"labeler": "knn"}),
                                                                Variant("b", {"labeler": "cosine"})))


@pytest.fixture(scope="session")
def tiny_study_run(join, tmp_path_factory):
    """One run of a two-cell study (labeler knn / cosine, seeds 0 and 1: 4 trials of 2 epochs, no
    pretraining) on the shared cluster, for the tests that read what a run leaves (records,
    reruns, tables, Tune's outputs: test_orchestrate.py) and what its callbacks saw: it also
    carries ``--callback mlflow`` (an sqlite tracking URI, where mlflow is installed) and a
    Python callback (``main(..., callbacks=[...])``; test_study_integrations.py)."""
    import types

    from ray import tune

    from lsdc.study import main

    class Seen(tune.Callback):
        def __init__(self):
            self.results = []

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self.results.append(result.get("acc"))

    join()
    root = tmp_path_factory.mktemp("tiny-study")
    storage, seen, argv = str(root / "store"), Seen(), TINY_STUDY_ARGS + ["--seeds", "0,1"]
    import importlib.util
    uri = f"sqlite:///{root / 'mlflow.db'}" if importlib.util.find_spec("mlflow") else None
    with pytest.MonkeyPatch.context() as mp:
        if uri:
            mp.setenv("MLFLOW_TRACKING_URI", uri)
            mp.setenv("MLFLOW_EXPERIMENT_NAME", "lsdc-test")
            argv += ["--callback", "mlflow"]
        code = main(TINY_STUDY, argv + ["--storage", storage], callbacks=[seen])
    return types.SimpleNamespace(study=TINY_STUDY, args=TINY_STUDY_ARGS, storage=storage, code=code,
                                 seen=seen.results, mlflow_uri=uri)


@pytest.fixture
def joined(join):
    yield join()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import ray
        ray.shutdown()        # no job of this process alive while the other worker runs an exclusive test


@pytest.fixture(autouse=True)
def _ray_test_isolation(request, tmp_path_factory):
    """For the tests in tests/runner: a test that does not join the shared cluster starts from a
    process not connected to Ray; tests run side by side (pytest-xdist) hold a shared lock, and
    those marked ``exclusive`` (they count Ray's processes and session folders on the machine)
    an exclusive one, so that no other Ray test runs beside them."""
    if not str(request.node.fspath).startswith(RUNNER + os.sep):
        yield
        return
    import fcntl
    if "joined" not in request.fixturenames and "ray" in sys.modules:
        import ray
        if ray.is_initialized():
            ray.shutdown()
    with open(_lock_file(tmp_path_factory), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX if request.node.get_closest_marker("exclusive") else fcntl.LOCK_SH)
        yield
        if os.environ.get("PYTEST_XDIST_WORKER") and "join" in request.fixturenames and "ray" in sys.modules:
            import ray
            ray.shutdown()   # as `joined` does: no job of this process alive while the other worker runs an exclusive test
