"""make_tables on stored fixture records: cells, missing studies, diverged trials, bad records, Figure 1."""
import os
import subprocess
import sys

import numpy as np
import pytest

from lsdc.config import make_config
from lsdc.records import seal
from lsdc.storage import Storage
from lsdc.tables import cell, render

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def record(study, variant, dataset, seed, acc, status="finished", row="", kind="trial", epochs=None, **cfg):
    c = make_config(dataset, seed=seed, **({"epochs": epochs} if epochs else {}), **cfg)
    n = 10 if dataset != "cifar100-20" else 20
    conf = (np.eye(n, dtype=int) * 50 + 1).tolist()
    return seal({"schema": 1, "kind": kind, "study": study, "variant": variant, "row": row,
            "dataset": dataset, "seed": seed, "config": c.to_dict(), "status": status,
            "diverged_epoch": 3 if status == "diverged" else None, "epochs_done": c.epochs,
            "final": {"acc": acc, "nmi": 0.5, "ari": 0.4, "confident_frac": 0.6, "confident_acc": 0.9}
            if status == "finished" else {"acc": None},
            "history": [], "confusion": {"all": conf, "confident": conf}, "wall_s": 1.0,
            "hardware": {"cpu": "test cpu", "torch_threads": 1}, "git_commit": "abcdef1234567890"})


@pytest.fixture
def store(tmp_path):
    s = Storage(str(tmp_path / "results"))
    recs = [record("batch_size", "64", "cifar10", 0, 0.70, labeler="sne", batch_size=64),
            record("batch_size", "64", "cifar10", 1, 0.72, labeler="sne", batch_size=64),
            record("batch_size", "256", "cifar10", 0, 0.80, labeler="sne"),
            record("batch_size", "256", "cifar10", 1, 0.81, labeler="sne"),
            record("batch_size", "256", "cifar10", 2, 0.85, labeler="sne"),
            record("batch_size", "512", "cifar10", 0, None, status="diverged", labeler="sne", batch_size=512),
            record("batch_size", "512", "cifar10", 1, 0.60, labeler="sne", batch_size=512),
            record("batch_size", "64", "digits", 0, 0.75, labeler="sne", batch_size=64),
            record("batch_size", "64", "cifar10", 5, 0.10, labeler="sne", batch_size=64, mixing="none"),
            record("pretraining", "SimCLR", "cifar10", 0, 0.5, row="K-means", kind="kmeans", pretrain="simclr"),
            record("pretraining", "SimCLR", "cifar10", 0, 0.4, row="Ours (SNE)", pretrain="simclr"),
            record("seeds", "LSD-C", "cifar10", 0, 0.8), record("seeds", "LSD-C", "cifar10", 1, 0.82)]
    for r in recs:
        s.write_json(f"{r['study']}/records/{r['key']}.json", r)
    (tmp_path / "results" / "batch_size" / "records" / "broken.json").write_text('{"schema": 1, "conf')
    return s


def test_cell_format():
    import pandas as pd
    assert cell(pd.Series([70.0, 72.0])) == "71.0 ± 1.4 (2)"
    assert cell(pd.Series([70.0])) == "70.0 (1)"
    assert cell(pd.Series([], dtype=float)) == "—"
    assert cell(pd.Series([60.0]), diverged=1) == "60.0 (1) +1 diverged"


def test_render_computes_mean_std_n_and_marks_missing(store, tmp_path):
    text, bad = render(store, str(tmp_path / "tables.md"))
    t5 = text[text.index("## Table 5"):text.index("## Labelers")]
    sd = np.std([80.0, 81.0, 85.0], ddof=1)
    assert f"82.0 ± {sd:.1f} (3) · paper 81.7±0.9" in t5
    assert "71.0 ± 1.4 (2) · paper 72.4±1.3" in t5
    assert "60.0 (1) +1 diverged · paper 80.9±1.2" in t5              # NaN never averaged in
    assert "— · paper 46.2±0.2" in t5                                 # cifar100-20 not run: not filled in
    assert "| digits" in t5 and "75.0 (1)" in t5
    other = next(line for line in t5.splitlines() if line.startswith("| cifar10 (mixing none)"))
    assert "10.0 (1) · paper 72.4±1.3" in other          # another setting never shares a cell
    assert "commit abcdef123456 (9)" in t5 and "seeds 0-2,5" in t5 and "(1 diverged)" in t5
    assert "*Not run yet*: `python studies/losses.py`" in text
    t4 = text[text.index("## Table 4"):text.index("## Mixing")]
    assert "50.0 (1) · paper 59.45" in t4 and "40.0 (1) · paper 43.5" in t4
    assert len(bad) == 1 and bad[0].endswith("broken.json")
    assert "Skipped 1 unreadable record(s)" in text
    assert "## Table 1" in text and "| cifar100-20 | sgd" in text


def test_figure1_png_and_confident_numbers(store, tmp_path):
    text, _ = render(store, str(tmp_path / "tables.md"))
    png = tmp_path / "figures" / "figure1_cifar10.png"
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "60.0% of samples have confidence > 0.9, with 90.0% ACC" in text
    seeds = text[text.index("## Headline"):]
    assert "81.0 ± 1.4 (2)" in seeds and "paper 60" in seeds


@pytest.mark.pipeline
def test_make_tables_command(store, tmp_path):
    out = tmp_path / "t.md"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "analysis", "make_tables.py"), "--storage", store.root,
                        "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and out.exists() and "## Table 5" in r.stdout
    assert "skipped unreadable record" in r.stderr and "broken.json" in r.stderr
    missing = subprocess.run([sys.executable, os.path.join(ROOT, "analysis", "make_tables.py"), "--storage",
                              str(tmp_path / "nothing")], capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
