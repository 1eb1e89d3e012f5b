"""A store written by lsdc 0.1 (record schema 1, every field in the key) is recognised as it
is: its records are verified and shown with the same cells, and re-running its study finds
nothing to do. The configuration is pinned here, not taken from presets (which may change)."""
import os
import re
import shutil

from lsdc.records import read_records
from lsdc.storage import Storage
from lsdc.studies import LOSSES
from lsdc.study import main
from lsdc.tables import render

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "fixtures", "store_v1")
# the digits preset of lsdc 0.1 with the command's overrides: every field a preset sets
PINNED = dict(width=0.125, batch_size=64, epochs=2, pretrain_epochs=1, lr_steps=[], rampup=0, lr=0.05, lam=2.0,
              optimizer="sgd", freeze_from=2, pretrain="simclr", pretrain_augment="strong", pretrain_batch_size=128,
              cosine_tau=0.9, sne_tau=0.01, sne_temperature=3.0, knn_k=10, weight_decay=5e-4, mixing="ricap",
              precision="auto")


def _argv(storage):
    argv = ["--dataset", "digits", "--seeds", "0,1", "--storage", storage, "--quiet", "--gpus-per-trial", "0"]
    for k, v in PINNED.items():
        argv += ["--set", f"{k}={v}" if not isinstance(v, list) else f"{k}=[]"]
    return argv


def _cells(md: str) -> list[str]:
    row = next(line for line in md.splitlines() if line.startswith("| digits"))
    return [c.strip() for c in row.strip("|").split("|")[1:]]


def test_v1_records_are_read_verified_and_shown_as_not_fingerprinted():
    records, bad = read_records(Storage(FIXTURE))
    assert bad == [] and len(records) == 8
    assert all(r["schema"] == 1 and r["data"]["fingerprint"] is None for r in records)
    text, bad = render(Storage(FIXTURE), os.devnull)
    t2 = text[text.index("## Table 2"):text.index("## Table 3")]
    old = open(os.path.join(FIXTURE, "table2_v1.md")).read()
    assert _cells(t2) == _cells(old)                      # the same cells as lsdc 0.1 rendered
    assert "data not fingerprinted" in next(line for line in t2.splitlines() if line.startswith("| digits"))


def test_rerunning_the_study_on_a_v1_store_finds_nothing_to_do(tmp_path, capsys):
    store = str(tmp_path / "store")
    shutil.copytree(FIXTURE, store)
    before = sorted(os.listdir(os.path.join(store, "losses", "records")))
    assert main(LOSSES, _argv(store)) == 0
    out = capsys.readouterr().out
    assert re.search(r"nothing to do: all 8 planned trials have records", out), out
    assert sorted(os.listdir(os.path.join(store, "losses", "records"))) == before


def test_a_tampered_v1_record_is_not_trusted(tmp_path):
    store = str(tmp_path / "store")
    shutil.copytree(FIXTURE, store)
    recs = os.path.join(store, "losses", "records")
    name = sorted(f for f in os.listdir(recs) if not f.startswith("km-"))[0]
    other = sorted(f for f in os.listdir(recs) if not f.startswith("km-"))[1]
    shutil.copy(os.path.join(recs, other), os.path.join(recs, name))     # one seed's record over another's
    records, bad = read_records(Storage(store))
    assert len(records) == 7 and len(bad) == 1 and bad[0].endswith(name)
