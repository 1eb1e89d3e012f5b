"""lsdc.results: the tidy frames from the real schema-1 fixture store and from made records; --csv."""
import glob
import json
import math
import os
import shutil

import pandas as pd
import pytest

from lsdc import results
from lsdc.config import make_config
from lsdc.keys import legacy_v1_key
from lsdc.storage import Storage
from lsdc.tables import main, records_frame

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STORE_V1 = os.path.join(ROOT, "tests", "fixtures", "store_v1")


def _json(path):
    with open(path) as f:
        return json.load(f)


def made(study="batch_size", variant="256", seed=0, acc=0.8, status="finished", data=None, **extra):
    cfg = make_config("cifar10", seed=seed, labeler="sne", **({"batch_size": int(variant)} if variant.isdigit()
                                                                else {"lr": 0.1 + len(variant) / 1000})).to_dict()
    hist = [{"epoch": e, "loss": 0.5 / e, "acc": acc - 0.1 / e if acc else None, "nmi": 0.5, "stability": 0.25}
            for e in (1, 2)]
    rec = {"schema": 1, "kind": "trial", "study": study, "variant": variant, "row": "", "key": legacy_v1_key(cfg),
           "dataset": "cifar10", "seed": seed, "config": cfg, "status": status,
           "final": {"acc": acc, "nmi": 0.5, "ari": 0.25, "confident_frac": 0.6, "confident_acc": 0.9, "loss": 0.25}
           if status == "finished" else {"acc": None, "nmi": None},
           "history": hist, "wall_s": 12.5, "images_per_s": 1000.0, "precision": "bf16",
           "hardware": {"gpu": "NVIDIA H100", "cpu": "x"}, "git_commit": "0123456789abcdef", "epochs_done": 2}
    if data is not None:
        rec["data"] = data
    rec.update(extra)
    return rec


def test_load_the_real_v1_store():
    df = results.load(STORE_V1)
    files = sorted(glob.glob(os.path.join(STORE_V1, "losses", "records", "*.json")))
    assert len(df) == len(files) == 8
    recs = {r["key"]: r for r in map(_json, files)}
    for _, row in df.iterrows():
        r = recs[row["key"]]
        assert row["acc_pct"] == pytest.approx(100 * r["final"]["acc"])
        assert row["nmi_pct"] == pytest.approx(100 * r["final"]["nmi"])          # percent too, not a fraction
        assert row["cfg_batch_size"] == r["config"]["batch_size"] == 64
        assert row["commit"] == r["git_commit"] and row["seed"] == r["seed"]
    assert set(df["data_fingerprint"]) == {results.NOT_FINGERPRINTED}              # never guessed
    assert df["data_source"].isna().all() and df["data_lossy"].isna().all()
    assert set(df["lsdc_version"]) == {"0.1.0"}                                  # from the record's versions
    assert set(df["hardware"]) == {"AMD EPYC (1 thread(s))"}
    km = df[df["kind"] == "kmeans"]
    assert len(km) == 2 and km["precision"].isna().all() and (df.loc[df["kind"] == "trial", "precision"] == "fp32").all()
    assert set(df["cfg_lr_steps"]) == {""} and "cfg_labeler" in df and "cfg_use_mse" in df
    for col in ("study", "variant", "row", "kind", "dataset", "seed", "status", "wall_s", "images_per_s",
                "commit", "data_fingerprint", "data_source", "precision", "lsdc_version", "hardware"):
        assert col in df.columns, col


def test_load_epochs_of_the_real_v1_store():
    ep = results.load_epochs(Storage(STORE_V1))
    recs = [_json(p) for p in glob.glob(os.path.join(STORE_V1, "losses", "records", "*.json"))]
    assert len(ep) == sum(len(r["history"]) for r in recs) == 12                 # k-means records have none
    one = next(r for r in recs if r["history"])
    mine = ep[ep["key"] == one["key"]].sort_values("epoch")
    assert list(mine["epoch"]) == [h["epoch"] for h in one["history"]]
    assert list(mine["acc_pct"]) == pytest.approx([100 * h["acc"] for h in one["history"]])
    assert list(mine["label_free_pct"]) == pytest.approx([100 * h["label_free"] for h in one["history"]])
    assert list(mine["loss"]) == pytest.approx([h["loss"] for h in one["history"]])   # not a fraction: as is
    assert {"study", "variant", "row", "kind", "dataset", "seed", "status"} <= set(ep.columns)


def test_newer_fields_and_diverged_records():
    recs = [made(data={"fingerprint": "sha256:abc", "source": "cifar10 JPEG copy", "lossy": True}, lsdc_version="0.2.0"),
            made(seed=1, status="diverged"), made(seed=2, data={"fingerprint": None, "lossy": False})]
    df = results.frame(recs).set_index("seed")
    assert df.loc[0, "data_fingerprint"] == "sha256:abc" and df.loc[0, "data_source"] == "cifar10 JPEG copy"
    assert df.loc[0, "data_lossy"] is True or bool(df.loc[0, "data_lossy"]) is True
    assert df.loc[0, "lsdc_version"] == "0.2.0" and df.loc[0, "precision"] == "bf16"
    assert df.loc[0, "hardware"] == "NVIDIA H100"
    assert df.loc[2, "data_fingerprint"] == results.NOT_FINGERPRINTED and not bool(df.loc[2, "data_lossy"])
    assert pd.isna(df.loc[1, "data_lossy"])
    assert math.isnan(df.loc[1, "acc_pct"]) and df.loc[1, "status"] == "diverged"   # never a number
    assert df.loc[0, "acc_pct"] == pytest.approx(80.0) and df.loc[0, "confident_frac_pct"] == pytest.approx(60.0)
    ep = results.epochs_frame(recs)
    assert len(ep) == 6 and ep["stability_pct"].dropna().eq(25.0).all()


def test_tables_frame_uses_one_unit():
    df = records_frame([made(acc=0.8)])
    assert df.loc[0, "acc_pct"] == pytest.approx(80.0) and df.loc[0, "nmi_pct"] == pytest.approx(50.0)
    assert not {"acc", "nmi", "ari"} & set(df.columns)
    assert isinstance(df.loc[0, "config"], dict)


def test_make_tables_csv_and_parquet(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    assert main(["--storage", STORE_V1, "--out", str(out / "tables.md"), "--csv", str(out / "data")]) == 0
    assert "results.parquet" in capsys.readouterr().err
    for name in ("results.csv", "epochs.csv", "results.parquet", "epochs.parquet"):
        assert (out / "data" / name).exists(), name
    csv = pd.read_csv(out / "data" / "results.csv")
    pq = pd.read_parquet(out / "data" / "results.parquet")
    assert len(csv) == len(pq) == 8 and list(csv.columns) == list(pq.columns)
    assert sorted(csv["acc_pct"].round(6)) == sorted(results.load(STORE_V1)["acc_pct"].round(6))
    assert len(pd.read_parquet(out / "data" / "epochs.parquet")) == 12
    assert (out / "report.html").exists() and (out / "tables.md").exists()
    # the fixture's Table 2 cells are unchanged by the statistics
    want = next(ln for ln in open(os.path.join(STORE_V1, "table2_v1.md")) if ln.startswith("| digits"))
    got = next(ln for ln in (out / "tables.md").read_text().splitlines() if ln.startswith("| digits ("))
    assert [c.strip() for c in got.split("|")[2:]] == [c.strip() for c in want.rstrip("\n").split("|")[2:]]
    assert "data not fingerprinted" in got
    assert not os.path.exists(os.path.join(STORE_V1, "figures"))                  # nothing written into the store


def test_bad_output_flags_get_one_line_errors(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for args, flag in ((["--csv", str(afile)], "--csv"), (["--figures", str(afile)], "--figures"),
                       (["--out", str(tmp_path)], "--out"), (["--out", str(tmp_path / "no" / "t.md")], "--out")):
        assert main(["--storage", STORE_V1, *args]) == 2, args
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {flag}:"), err
    assert not (tmp_path / "report.html").exists()


def test_readers_never_unpickle():
    src = "".join(open(os.path.join(ROOT, "lsdc", f)).read() for f in ("results.py", "tables.py", "report.py",
                                                                       "stats.py", "figures.py", "records.py"))
    for bad in ("import pickle", "pickle.load", "read_pickle", "torch.load", "joblib", "ExperimentAnalysis"):
        assert bad not in src, bad


def test_results_load_copes_with_a_copied_store(tmp_path):
    shutil.copytree(STORE_V1, tmp_path / "s")
    (tmp_path / "s" / "losses" / "records" / "junk.json").write_text("{not json")
    assert len(results.load(str(tmp_path / "s"))) == 8                            # unreadable: skipped


def test_analysis_modules_import_no_heavy_library_at_top_level():
    """lsdc.tables and the modules it adds import neither torch nor ray themselves, and matplotlib and scipy
    only inside functions. (Today `import lsdc.tables` still loads torch through lsdc/__init__.py -> trial,
    config -> data and study -> models, which are outside this change.)"""
    import ast
    import subprocess
    import sys
    for name in ("tables.py", "results.py", "stats.py", "report.py", "figures.py"):
        tree = ast.parse(open(os.path.join(ROOT, "lsdc", name)).read())
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        mods = {a.name.split(".")[0] for n in top if isinstance(n, ast.Import) for a in n.names} | \
            {(n.module or "").split(".")[0] for n in top if isinstance(n, ast.ImportFrom) and not n.level}
        assert not mods & {"torch", "ray", "matplotlib", "scipy"}, (name, mods)
    r = subprocess.run([sys.executable, "-c", "import sys, lsdc.tables; print('ray' in sys.modules)"],
                       capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": ROOT})
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr
