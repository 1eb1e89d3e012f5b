"""The study runner on the session's shared Ray cluster (CPU, tiny digits trials); on a cluster of
several nodes: test_faults.py's lost-node test."""
import json
import os
import subprocess
import sys

import pytest

from conftest import TINY_STUDY, TINY_STUDY_ARGS
from lsdc.records import read_records
from lsdc.storage import Storage
from lsdc.study import Study, Variant, main, plan

# no pretraining: these tests are about records, reruns, tables and Tune's outputs (pretraining
# through the runner: test_studies.py's Table 2, test_study_integrations.py's smoke test, test_faults.py)
TINY, STUDY = TINY_STUDY_ARGS, TINY_STUDY
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def ran(tiny_study_run):
    """The session's run of this study, seeds 0 and 1 (conftest.py): its storage and exit code."""
    return tiny_study_run.storage, tiny_study_run.code


def test_local_ray_run_leaves_one_readable_record_per_trial(joined, ran):
    storage, code = ran
    assert code == 0
    records, bad = read_records(Storage(storage), ["tiny"])
    assert bad == [] and len(records) == 4
    assert {(r["variant"], r["seed"]) for r in records} == {("a", 0), ("a", 1), ("b", 0), ("b", 1)}
    for r in records:
        assert r["status"] == "finished" and r["epochs_done"] == 2 and len(r["history"]) == 2
        assert 0 <= r["final"]["acc"] <= 1 and r["wall_s"] > 0 and r["images_per_s"] > 0
        assert r["config"]["epochs"] == 2 and r["versions"]["torch"] and r["hardware"]["cpu_count"]
        assert len(r["confusion"]["all"]) == 10
        assert "git_commit" in r
    plan_file = json.load(open(os.path.join(storage, "tiny", "plans", "digits.json")))
    assert len(plan_file["trials"]) == 4
    assert not os.path.exists(os.path.join(storage, "backbones"))     # pretrain=none: nothing pretrained


def test_rerun_skips_finished_trials(joined, ran, capsys):
    storage, _ = ran
    before = {r["key"]: r["finished_at"] for r in read_records(Storage(storage), ["tiny"])[0]}
    assert main(STUDY, TINY + ["--seeds", "0,1", "--storage", storage]) == 0
    out = capsys.readouterr().out
    assert "nothing to do: all 4 planned trials have records" in out
    after = {r["key"]: r["finished_at"] for r in read_records(Storage(storage), ["tiny"])[0]}
    assert after == before


def test_new_seed_runs_only_the_new_trials_and_other_studies_reuse_records(joined, ran, capsys):
    storage, _ = ran
    assert main(STUDY, TINY + ["--seeds", "0,1,2", "--storage", storage]) == 0
    out = capsys.readouterr().out
    assert "4 finished already, 2 to run" in out
    other = Study(name="tiny_other", title="same trials", variants=(Variant("knn", {"labeler": "knn"}),))
    assert main(other, TINY + ["--seeds", "0,1", "--storage", storage]) == 0
    out = capsys.readouterr().out
    assert "2 finished already (2 reused from other studies), 0 to run" in out
    recs = read_records(Storage(storage), ["tiny_other"])[0]
    assert {r["variant"] for r in recs} == {"knn"} and all(r["reused_from"] == "tiny" for r in recs)


def test_make_tables_on_the_run(joined, ran, tmp_path):
    storage, _ = ran
    out = subprocess.run([sys.executable, os.path.join(ROOT, "analysis", "make_tables.py"), "--storage", storage,
                          "--out", str(tmp_path / "t.md")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    text = (tmp_path / "t.md").read_text()
    assert "Table 5" in text and "Not run yet" in text
    # this storage's own study, with the records of this run: both columns, every seed
    import re
    section = text[text.index("## Study 'tiny'"):]
    section = section[:section.index("\n## ", 3)]
    rows = [line for line in section.splitlines() if line.startswith("| digits")]
    cells = [c.strip() for row in rows for c in row.strip("|").split("|")[1:]]
    ns = [int(m.group(1)) for c in cells for m in [re.search(r"± \d+\.\d \((\d+)\)", c)] if m]
    records, _ = read_records(Storage(storage), ["tiny"])
    assert len(ns) == 2 and sum(ns) == len(records)      # columns a and b (each its own labeler setting)


def test_tune_outputs_tensorboard_and_experiment_analysis_find_every_trial(joined, ran):
    """Ray Tune's own outputs are kept: ExperimentAnalysis over the study's Tune folders (one
    per run) returns every trial, and every trial's per-epoch ACC is in its TensorBoard events."""
    import glob

    from ray.tune import ExperimentAnalysis
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    storage, _ = ran
    records = {r["key"]: r for r in read_records(Storage(storage), ["tiny"])[0]}
    tune_root = os.path.join(storage, "tiny", "tune")
    seen = {}
    for exp in sorted(glob.glob(os.path.join(tune_root, "*", ""))):
        ea = ExperimentAnalysis(exp)
        for t in ea.trials:
            key = t.config["spec"]["key"]
            events = glob.glob(os.path.join(t.path, "events.out.tfevents*"))
            assert events, t.path
            acc = EventAccumulator(t.path)
            acc.Reload()
            seen[key] = [e.value for e in acc.Scalars("ray/tune/acc")]
        assert len(ea.dataframe()) == len(ea.trials)
    assert set(seen) == set(records)                     # every trial, across the runs' folders
    for key, values in seen.items():
        want = [h["acc"] for h in records[key]["history"]]
        assert values == pytest.approx(want, rel=1e-5)


def test_debug_mode_runs_one_trial_in_process_without_ray(debug_store, capsys):
    import ray
    assert main(STUDY, ["--debug", "--storage", debug_store]) == 0
    out = capsys.readouterr().out
    assert "[debug] done in" in out and "epoch 2/2" in out and not ray.is_initialized()
    assert not os.path.exists(os.path.join(debug_store, "tiny"))      # no records from debug runs


@pytest.mark.parametrize("argv,message", [
    (["--dataset", "imagenet"], "dataset: unknown 'imagenet'"),
    (["--seeds", ""], "--seeds: empty list"),
    (["--seeds", "1,1"], "--seeds: duplicate seed 1"),
    (["--set", "batch_size=1"], "batch_size: must be >= 2"),
    (["--set", "knn_k=256"], r"knn_k: must be < batch_size \(256\)"),
])
def test_bad_input_fails_before_anything_is_written(tmp_path, capsys, argv, message):
    store = tmp_path / "never"
    code = main(STUDY, TINY + ["--storage", str(store)] + argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and len(err.splitlines()) == 1
    import re
    assert re.search(message, err)
    assert not store.exists()


def test_plan_uses_paper_seed_counts_and_explicit_lists():
    from lsdc.studies import BATCH_SIZE
    p = plan(BATCH_SIZE, "digits")
    counts = {v: sum(x.variant == v for x in p) for v in ("64", "128", "256", "512")}
    assert counts == {"64": 2, "128": 2, "256": 10, "512": 2}
    assert all(x.cfg.labeler == "sne" for x in p)
    p = plan(BATCH_SIZE, "digits", seeds=[5, 7])
    assert sorted({x.cfg.seed for x in p}) == [5, 7] and len(p) == 8
    assert len({x.key for x in p}) == 8


def test_pretraining_tasks_share_the_cpus_the_trials_wait_with(joined):
    """On a CPU cluster (the shared one: 2 CPUs on one node) one backbone is pretrained on both
    (free) CPUs, two on one each; with GPUs, each task asks for what a trial asks for."""
    import ray

    from lsdc.runner.orchestrate import pretrain_cpus
    assert pretrain_cpus(1, 0, 1) == max(1, min(2, int(ray.available_resources().get("CPU", 0))))
    assert pretrain_cpus(1, 0, 2) == 1 and pretrain_cpus(1, 0, 5) == 1
    assert pretrain_cpus(1, 0.5, 1) == 1
