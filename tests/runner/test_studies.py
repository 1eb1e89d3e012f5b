"""Every study script's --debug, a real (tiny) Table 2 run with its k-means baseline, and the search."""
import json
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


def test_study_scripts_are_thin_and_runnable(debug_store):
    scripts = sorted(f for f in os.listdir(os.path.join(ROOT, "studies")) if f.endswith(".py"))
    assert set(scripts) >= {f"{n}.py" for n in STUDIES} | {"search.py"}
    out = subprocess.run([sys.executable, os.path.join(ROOT, "studies", "block_depth.py"), "--debug",
                          "--storage", debug_store], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "[debug] done in" in out.stdout
    helped = subprocess.run([sys.executable, os.path.join(ROOT, "studies", "mixing.py"), "--help"],
                            capture_output=True, text=True, timeout=60)
    for flag in ("--dataset", "--seeds", "--epochs", "--gpus-per-trial", "--cpus-per-trial", "--address",
                 "--storage", "--data-root", "--resume", "--debug"):
        assert flag in helped.stdout


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


def test_search_completes_and_resumes(joined, tmp_path, capsys):
    storage = str(tmp_path / "res")
    args = ["--dataset", "digits", "--epochs", "2", "--set", "pretrain=none", "--set", "width=0.125",
            "--set", "batch_size=256", "--max-concurrent", "2", "--storage", storage, "--quiet",
            "--objective", "label_free"]
    assert search_main(args + ["--trials", "3"]) == 0
    out = capsys.readouterr().out
    assert "0/3 trials done" in out and "best configuration:" in out
    best_files = [f for f in os.listdir(os.path.join(storage, "search")) if f.startswith("best-")]
    assert len(best_files) == 1
    best = json.load(open(os.path.join(storage, "search", best_files[0])))
    assert best["n_trials"] == 3 and best["objective"] == "label_free"
    assert set(best["best"]["params"]) == {"knn_k", "lam", "rampup", "lr"}
    assert best["best_config"]["knn_k"] == best["best"]["params"]["knn_k"]
    assert search_main(args + ["--trials", "4"]) == 0
    out = capsys.readouterr().out
    assert "3/4 trials done" in out
    best = json.load(open(os.path.join(storage, "search", best_files[0])))
    assert best["n_trials"] == 4
    # the reported rank correlation is the one of the stored trials (recomputed here)
    from scipy.stats import spearmanr
    table = json.load(open(os.path.join(storage, "search", best_files[0].replace("best-", "")[:-5] + "-trials.json")))
    pairs = [(t["objective"], t["acc"]) for t in table.values()
             if t.get("objective") is not None and t.get("acc") is not None and not t["diverged"]]
    rho = spearmanr([p[0] for p in pairs], [p[1] for p in pairs]).statistic if len(pairs) >= 3 else None
    if rho is None or rho != rho:
        assert best["spearman_vs_acc"] is None
    else:
        assert best["spearman_vs_acc"] == round(float(rho), 3)
    assert search_main(args + ["--trials", "4"]) == 0            # nothing left: no new trials
    assert json.load(open(os.path.join(storage, "search", best_files[0])))["n_trials"] == 4


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
