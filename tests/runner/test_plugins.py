"""A user's labeler module named by --plugin reaches Ray's workers (LSDC_PLUGINS in their
runtime environment): a study with it runs on a local Ray and leaves its records."""
import os
import sys

from lsdc.records import read_records
from lsdc.storage import Storage
from lsdc.study import Study, Variant, main

HERE = os.path.dirname(os.path.abspath(__file__))


def test_plugin_labeler_runs_in_ray_workers(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.syspath_prepend(HERE)
    study = Study(name="plugged", title="a plugin labeler", variants=(Variant("toy", {"labeler": "toy_dot"}),))
    storage = str(tmp_path / "store")
    argv = ["--dataset", "digits", "--epochs", "2", "--set", "pretrain=none", "--set", "width=0.125",
            "--set", "batch_size=256", "--quiet", "--seeds", "0", "--storage", storage, "--plugin", "toy_plugin"]
    try:
        assert main(study, argv) == 0
    finally:
        from lsdc.registry import LABELERS
        LABELERS.remove("toy_dot")
        sys.modules.pop("toy_plugin", None)
        from lsdc import registry
        registry._PLUGINS_LOADED.discard("toy_plugin")
    records, bad = read_records(Storage(storage), ["plugged"])
    assert not bad and len(records) == 1
    r = records[0]
    assert r["config"]["labeler"] == "toy_dot" and r["effective"]["toy_dot_threshold"] == 0.8
    assert r["status"] == "finished" and len(r["history"]) == 2
