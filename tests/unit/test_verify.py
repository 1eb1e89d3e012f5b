"""Issue 10, without Ray: records verified on read (and make_tables never crashes on one),
group-readable files, Optuna journal repair and stale RUNNING trials, lsdc's own trial
checkpoints (foreign / corrupt / pickled: discarded, never executed), bad cached backbones
moved aside, and inputs refused before compute. Each test fails without the fix it names."""
import hashlib
import json
import os
import re
import stat

import numpy as np
import pytest
import torch

from lsdc.config import make_config
from lsdc.records import quarantine, read_records, record_path, seal, verified_keys
from lsdc.storage import Storage
from lsdc.study import Study, Variant, main

TINY = ["--dataset", "digits", "--pretrain-epochs", "1", "--set", "width=0.125", "--set", "batch_size=64", "--quiet"]


def rec(study, seed, acc=0.7):
    c = make_config("digits", seed=seed, width=0.125)
    return seal({"kind": "trial", "study": study, "variant": "a", "row": "", "dataset": "digits", "seed": seed,
                 "config": c.to_dict(), "status": "finished", "diverged_epoch": None, "epochs_done": 1,
                 "final": {"acc": acc, "nmi": 0.5, "ari": 0.4}, "history": [], "confusion": None})


def put(s, study, r, key=None):
    s.write_json(record_path(study, key or r["key"]), r)


@pytest.fixture
def store(tmp_path):
    s = Storage(str(tmp_path / "res"))
    good = [rec("st", 0), rec("st", 1)]
    for r in good:
        put(s, "st", r)
    return s, good


def test_every_bad_record_is_skipped_named_and_never_crashes_make_tables(store, tmp_path):
    from lsdc.tables import render
    s, good = store
    r2, r3, r4, r5, r6 = rec("st", 2), rec("st", 3), rec("st", 4), rec("st", 5), rec("st", 6)
    with open(s.path(record_path("st", r2["key"])), "w") as f:            # truncated
        f.write(json.dumps(r2)[:200])
    put(s, "st", good[0], key=r3["key"])                                  # one seed's record over another's file
    put(s, "st", dict(r4, study="elsewhere"))                             # planted: another study's record
    put(s, "st", {k: v for k, v in r5.items() if k != "study"})          # no study field
    put(s, "st", dict(r6, final={"acc": "0.9", "nmi": 0.5, "ari": 0.4}))  # a string metric
    r7 = rec("st", 7)
    put(s, "st", dict(r7, final={"acc": 7.5, "nmi": 0.5, "ari": 0.4}))   # out of range
    reasons = {}
    recs, bad = read_records(s, ["st"], reasons)
    assert sorted(r["key"] for r in recs) == sorted(r["key"] for r in good)
    assert len(bad) == 6
    why = " | ".join(reasons.values())
    for part in ("unreadable", "does not hash to its file name", "study 'elsewhere'", "'study' missing",
                 "'0.9' is not a number", "7.5 is not a number in [0, 1]"):
        assert part in why, why
    text, skipped = render(s, str(tmp_path / "t.md"))                     # never crashes, averages nothing bad
    assert len(skipped) == 6 and "750" not in text
    assert verified_keys(s, "st") == {r["key"] for r in good}
    # the runner quarantines them (readers do not): moved aside, named, the good ones stay
    lines = []
    moved = quarantine(s, "st", log=lines.append)
    assert len(moved) == 6 and len(lines) == 6 and all("quarantined record" in ln for ln in lines)
    assert sorted(s.list("st/records", ".json")) == sorted(r["key"] + ".json" for r in good)
    assert len(os.listdir(s.path("st", "quarantine"))) == 6


def test_a_collapsed_trials_negative_ari_is_a_valid_record(tmp_path):
    """ARI is below 0 when clusters agree with the classes less than chance does (the 200-trial
    cluster simulation met two such 1-epoch trials: ARI -1.5e-05 and -8.7e-06). Such a record is
    valid; it used to be refused, quarantined and re-run forever. ARI below its minimum, -0.5, is not."""
    s = Storage(str(tmp_path / "res"))
    ok = seal(dict(rec("st", 0), final={"acc": 0.1035, "nmi": 0.0052, "ari": -1.4582553632354002e-05}))
    low = seal(dict(rec("st", 1), final={"acc": 0.1, "nmi": 0.0, "ari": -0.75}))
    put(s, "st", ok)
    put(s, "st", low)
    reasons = {}
    recs, bad = read_records(s, ["st"], reasons)
    assert [r["key"] for r in recs] == [ok["key"]] and len(bad) == 1
    assert "final ari -0.75 is not a number in [-0.5, 1]" in " ".join(reasons.values())
    assert verified_keys(s, "st") == {ok["key"]}


def test_storage_files_are_group_readable(tmp_path):
    from lsdc.pretrain import _save_atomic
    old = os.umask(0o022)
    try:
        s = Storage(str(tmp_path))
        s.write_json("st/records/a.json", {"x": 1})
        _save_atomic({"w": torch.zeros(2)}, str(tmp_path / "backbones" / "b.pt"))
    finally:
        os.umask(old)
    for p in (tmp_path / "st" / "records" / "a.json", tmp_path / "backbones" / "b.pt"):
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o644, p


def test_enospc_leaves_no_partial_file_and_the_next_write_works(tmp_path, monkeypatch):
    flag = tmp_path / "full"
    flag.write_text("")
    monkeypatch.setenv("LSDC_FAULT_ENOSPC", str(flag))
    s = Storage(str(tmp_path / "s"))
    with pytest.raises(OSError, match="No space left"):
        s.write_json("st/records/a.json", {"x": 1})
    assert os.listdir(tmp_path / "s" / "st" / "records") == []          # no temporary file left
    flag.unlink()                                                        # space freed
    s.write_json("st/records/a.json", {"x": 1})
    assert s.read_json("st/records/a.json") == {"x": 1}


def test_killed_search_journal_is_repaired_and_stale_running_trials_fail(tmp_path):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from lsdc.runner.search import fail_stale_trials, repair_journal
    path = str(tmp_path / "s.journal")
    st = optuna.create_study(study_name="s", storage=JournalStorage(JournalFileBackend(path)))
    t = st.ask()
    st.tell(t, 1.0)
    st.ask()                                            # left RUNNING by a killed search
    with open(path, "ab") as f:
        f.write(b'{"op_code": 5, "wor')               # a torn line (killed mid-write) ...
    with open(path, "ab") as f:
        f.write(b'{"op_code": 6}\n')                   # ... that the next append glued onto
    with pytest.raises(ValueError):                     # without the repair: every resume fails
        optuna.load_study(study_name="s", storage=JournalStorage(JournalFileBackend(path))).ask()
    lines = []
    assert repair_journal(path, log=lines.append) and "torn or corrupt line" in lines[0]
    assert os.path.exists(path + ".corrupt-1")
    journal = JournalStorage(JournalFileBackend(path))
    st = optuna.load_study(study_name="s", storage=journal)
    assert fail_stale_trials(st, journal, log=lines.append) == 1
    st = optuna.load_study(study_name="s", storage=JournalStorage(JournalFileBackend(path)))
    assert [t.state.name for t in st.trials] == ["COMPLETE", "FAIL"]
    assert not repair_journal(path)                     # a sound journal is left as it is


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_unusable_trial_checkpoint_is_discarded_with_a_warning(tmp_path, env):
    """foreign (another trial's), corrupt, pickled (hash fixed by the attacker), hash mismatch."""
    from lsdc.planning import Planned
    from lsdc.runner.trainable import checkpoint_dir, load_checkpoint, save_checkpoint
    from lsdc.trial import Trial
    import ray
    connected = ray.is_initialized()          # this process may be joined to a test cluster (tests/runner)
    s = Storage(str(tmp_path / "s"))
    kw = dict(epochs=2, width=0.125, batch_size=64, pretrain="none", device="cpu", precision="fp32")
    p = Planned("st", "a", "", "trial", make_config("digits", seed=0, **kw), "f")
    q = Planned("st", "a", "", "trial", make_config("digits", seed=1, **kw), "f")
    t = Trial.from_config(p.cfg, env, log=lambda m: None)
    t2 = Trial.from_config(q.cfg, env, log=lambda m: None)
    marker = tmp_path / "pwned"
    folder = s.path(checkpoint_dir(p))
    for kind in ("foreign", "corrupt", "pickled", "hash"):
        save_checkpoint(s, p, t, 0)
        assert load_checkpoint(s, p, t, log=lambda m: None) == 1          # the sound one loads
        meta = json.load(open(os.path.join(folder, "meta.json")))
        f = os.path.join(folder, meta["file"])
        if kind == "foreign":       # another trial's checkpoint copied here
            save_checkpoint(s, q, t2, 0)
            s.delete_dir(checkpoint_dir(p))
            os.rename(s.path(checkpoint_dir(q)), folder)
        elif kind in ("corrupt", "pickled"):
            if kind == "pickled":
                torch.save({"model": Evil(marker)}, f)
            else:
                open(f, "wb").write(b"PK\x03\x04 not a checkpoint")
            meta["sha256"] = hashlib.sha256(open(f, "rb").read()).hexdigest()   # an attacker can fix the hash
            json.dump(meta, open(os.path.join(folder, "meta.json"), "w"))
        else:
            with open(f, "ab") as fh:
                fh.write(b"x")
        lines = []
        assert load_checkpoint(s, p, t, log=lines.append) is False, kind
        assert "warning: checkpoint" in lines[0] and "starts from scratch" in lines[0], lines
        assert not os.path.exists(folder) and not marker.exists()
    # the node a checkpoint was written on: none outside Ray, and asking started no Ray here
    if not connected:
        assert meta["ray_node_id"] is None and not ray.is_initialized()


@pytest.mark.parametrize("kind", ["corrupt", "mismatched", "malicious"])
def test_bad_cached_backbone_is_moved_aside_not_fatal(tmp_path, kind):
    from lsdc.data import fingerprint
    from lsdc.pretrain import backbone_path, cached_backbone_ok
    cfg = make_config("digits", pretrain_epochs=1, width=0.125, batch_size=64, epochs=1, seed=0)
    path = backbone_path(cfg, str(tmp_path), fingerprint("digits"))
    os.makedirs(os.path.dirname(path))
    marker = tmp_path / "pwned"
    if kind == "corrupt":
        open(path, "wb").write(b"PK\x03\x04 not really a checkpoint")
    elif kind == "mismatched":
        torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "meta": {}}, path)
    else:
        torch.save({"state_dict": Evil(marker), "meta": {}}, path)
    lines = []
    assert cached_backbone_ok(path, cfg, fingerprint("digits"), log=lines.append) is False
    assert not os.path.exists(path) and len(os.listdir(os.path.join(os.path.dirname(path), "quarantine"))) == 1
    assert lines[0].startswith("warning: backbone checkpoint") and "pretraining it again" in lines[0]
    assert not marker.exists()


def npz(tmp_path, name, x, y):
    p = tmp_path / name
    np.savez(p, images=x, labels=y)
    return str(p)


@pytest.mark.parametrize("case,message", [
    ("seed", "--set seed: the seeds are chosen with --seeds"),
    ("dataset", "--set dataset: the dataset is chosen with --dataset"),
    ("storage", "--storage: empty"),
    ("gpus-nan", "--gpus-per-trial: must be a finite number >= 0, got nan"),
    ("gpus-inf", "--gpus-per-trial: must be a finite number >= 0, got inf"),
    ("gpus-neg", "--gpus-per-trial: must be a finite number >= 0, got -1"),
    ("cpus-nan", "--cpus-per-trial: must be a finite number > 0, got nan"),
    ("cuda", "--set device=cuda:0: this machine has no CUDA device"),
    ("nan-labels", "labels 'labels' hold NaN or inf"),
    ("one-class", r"the labels hold 1 class\(es\); clustering needs at least 2"),
    ("lengths", "100 images but 90 labels"),
])
def test_bad_input_is_refused_before_compute(tmp_path, capsys, monkeypatch, case, message):
    monkeypatch.chdir(tmp_path)
    x = np.random.default_rng(0).integers(0, 255, (100, 8, 8), dtype=np.uint8)
    y = np.arange(100) % 3
    extra = {"seed": ["--set", "seed=-3"], "dataset": ["--set", "dataset=mnist"], "storage": ["--storage", ""],
             "gpus-nan": ["--gpus-per-trial", "nan"], "gpus-inf": ["--gpus-per-trial", "inf"],
             "gpus-neg": ["--gpus-per-trial", "-1"], "cpus-nan": ["--cpus-per-trial", "nan"],
             "cuda": ["--set", "device=cuda:0"],
             "nan-labels": ["--dataset", npz(tmp_path, "n.npz", x, np.where(y == 2, np.nan, y))],
             "one-class": ["--dataset", npz(tmp_path, "o.npz", x, np.zeros(100, dtype=int))],
             "lengths": ["--dataset", npz(tmp_path, "l.npz", x, y[:90])]}[case]
    if case == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    argv = TINY + ["--epochs", "1", "--storage", str(tmp_path / "store")] + extra
    code = main(Study(name="bad", title="t", variants=(Variant("a"),)), argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and re.search(message, err), err
    assert not (tmp_path / "store").exists() and sorted(os.listdir(tmp_path)) == sorted(
        f for f in os.listdir(tmp_path) if f.endswith(".npz"))                 # nothing written, not even in '.'


def test_relative_npz_path_is_made_absolute_at_planning(tmp_path, monkeypatch):
    from lsdc.planning import plan
    monkeypatch.chdir(tmp_path)
    x = np.random.default_rng(0).integers(0, 255, (60, 8, 8), dtype=np.uint8)
    npz(tmp_path, "d.npz", x, np.arange(60) % 3)
    p = plan(Study(name="s", title="t", variants=(Variant("a"),)), "d.npz", [0], {"width": 0.125})
    assert p[0].cfg.dataset == str(tmp_path / "d.npz")


def test_data_is_identified_by_content_not_path(tmp_path):
    from lsdc.planning import plan
    from lsdc.pretrain import backbone_key
    x = np.random.default_rng(0).integers(0, 255, (60, 8, 8), dtype=np.uint8)
    path = npz(tmp_path, "d.npz", x, np.arange(60) % 3)
    study = Study(name="s", title="t", variants=(Variant("a"),))
    before = plan(study, path, [0], {"width": 0.125})[0]
    npz(tmp_path, "d.npz", 255 - x, np.arange(60) % 3)               # other images, same path
    after = plan(study, path, [0], {"width": 0.125})[0]
    assert before.key != after.key
    assert backbone_key(before.cfg, before.fingerprint) != backbone_key(after.cfg, after.fingerprint)
