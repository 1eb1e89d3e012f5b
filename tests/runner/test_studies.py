"""Every study script's --debug, a real (tiny) Table 2 run with its k-means baseline, and a search
whose trials fail (the search completed, resumed and extended: test_faults.py's killed search)."""
import os
import subprocess
import sys

import pytest

from lsdc.records import read_records
from lsdc.storage import Storage
from lsdc.studies import STUDIES
from lsdc.study import main, search_main
from lsdc.tables import render

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ["--dataset", "digits", "--epochs", "2", "--pretrain-epochs", "1", "--set", "width=0.125",
        "--set", "batch_size=256", "--quiet"]


@pytest.mark.parametrize("name", sorted(STUDIES))
def test_each_study_debug_mode(name, debug_store, capsys):
    study = STUDIES[name]
    assert main(study, ["--debug", "--epochs", "1", "--storage", debug_store]) == 0
    out = capsys.readouterr().out
    assert f"[debug] {name}: variant {study.variants[study.debug_variant].label!r}" in out
    assert "[debug] done in" in out or "[debug] k-means acc" in out


def test_study_scripts_are_thin_and_runnable(debug_store, monkeypatch, capsys):
    import runpy
    scripts = sorted(f for f in os.listdir(os.path.join(ROOT, "studies")) if f.endswith(".py"))
    assert set(scripts) >= {f"{n}.py" for n in STUDIES} | {"search.py"}
    out = subprocess.run([sys.executable, os.path.join(ROOT, "studies", "block_depth.py"), "--debug",
                          "--storage", debug_store], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "[debug] done in" in out.stdout
    script = os.path.join(ROOT, "studies", "mixing.py")      # another script, run here as python would
    monkeypatch.setattr(sys, "argv", [script, "--help"])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(script, run_name="__main__")
    assert e.value.code in (0, None)
    helped = capsys.readouterr().out
    for flag in ("--dataset", "--seeds", "--epochs", "--gpus-per-trial", "--cpus-per-trial", "--address",
                 "--storage", "--data-root", "--resume", "--debug"):
        assert flag in helped


def test_table2_on_digits_with_kmeans_baseline_and_figure1(joined, tmp_path):
    storage = str(tmp_path / "res")
    assert main(STUDIES["losses"], TINY + ["--seeds", "0", "--storage", storage]) == 0
    recs, bad = read_records(Storage(storage), ["losses"])
    assert not bad and sorted(r["variant"] for r in recs) == ["K-means", "Ours (kNN)", "w/ non-lin.", "w/o MSE"]
    # one backbone pretrained (a Ray task) for the k-means baseline and the three trials, in the storage
    assert len([f for f in os.listdir(os.path.join(storage, "backbones")) if f.endswith(".pt")]) == 1
    assert len({r["backbone"]["file"] for r in recs if r["kind"] == "trial"}) == 1
    km = next(r for r in recs if r["kind"] == "kmeans")
    assert 0 < km["final"]["acc"] <= 1 and km["key"].startswith("km-")
    assert next(r for r in recs if r["variant"] == "w/o MSE")["config"]["use_mse"] is False
    text, _ = render(Storage(storage), str(tmp_path / "tables.md"))
    t2 = text[text.index("## Table 2"):text.index("## Table 3")]
    row = next(line for line in t2.splitlines() if line.startswith("| digits"))
    assert "epochs 2" in row and "pretrain_epochs 1" in row and "batch_size 256" in row and "(1)" in row
    assert "width" not in row                      # 0.125 is the digits preset's: the label names differences only
    assert (tmp_path / "figures" / "figure1_digits.png").exists()


def test_search_whose_trials_fail_exits_1_and_says_so(joined, tmp_path, monkeypatch, capsys):
    """A trial killed (the mid-epoch hook, sent with the trial to its worker), no retry: the
    search reports it and exits 1, not 0 with a 'best' of nothing."""
    monkeypatch.setenv("LSDC_FAULT", "mid-epoch")
    monkeypatch.setenv("LSDC_FAULT_ONCE", str(tmp_path / "once"))
    code = search_main(["--dataset", "digits", "--epochs", "2", "--set", "pretrain=none", "--set", "width=0.125",
                        "--set", "batch_size=256", "--storage", str(tmp_path / "res"), "--quiet", "--trials", "1",
                        "--no-asha", "--max-failures", "0"])
    out = capsys.readouterr().out
    assert code == 1 and "1 trial(s) failed (errors above); 0/1 trials complete" in out, out[-2000:]
    assert os.listdir(tmp_path / "once") == ["mid-epoch"]
