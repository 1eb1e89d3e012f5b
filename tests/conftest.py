import os

import pytest

from lsdc.config import Env, make_config


@pytest.fixture(scope="session")
def env(tmp_path_factory):
    """A private backbone cache shared by the session's tests (pretraining is paid once)."""
    root = tmp_path_factory.mktemp("lsdc")
    return Env(data_root=str(root / "data"), cache_dir=str(root / "cache"))


def tiny(**overrides):
    """A digits config that trains in a second or two on a laptop CPU."""
    base = dict(epochs=2, pretrain_epochs=1, width=0.125, batch_size=64, device="cpu")
    base.update(overrides)
    return make_config("digits", **base)


@pytest.fixture
def tiny_cfg():
    return tiny


SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


def pytest_collection_modifyitems(config, items):
    """tests/unit: fast tests of the maths, configs, keys and tables (no Ray): ``-m unit``.
    tests/runner: short real runs on local Ray clusters: ``-m ray``."""
    import pytest
    for item in items:
        parts = str(item.fspath).split(os.sep)
        item.add_marker(pytest.mark.unit if "unit" in parts else pytest.mark.ray)
