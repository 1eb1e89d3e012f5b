"""report.html: one self-contained file with every table and figure, checked statically and in a real
headless browser (Debian's chromium; installed by .ci/run)."""
import base64
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from lsdc.config import make_config
from lsdc.records import seal
from lsdc.storage import Storage
from lsdc.tables import main

CHROMIUM = shutil.which("chromium")


def rec(study, variant, seed, acc, **cfg):
    c = make_config("cifar10", seed=seed, **cfg).to_dict()
    conf = (np.eye(10, dtype=int) * 50 + 1).tolist()
    return seal({"schema": 1, "kind": "trial", "study": study, "variant": variant, "row": "", "dataset": "cifar10",
            "seed": seed, "config": c, "status": "finished",
            "final": {"acc": acc, "nmi": 0.5, "ari": 0.4, "confident_frac": 0.6, "confident_acc": 0.9},
            "history": [{"epoch": 1, "acc": acc - 0.05, "loss": 0.4}, {"epoch": 2, "acc": acc, "loss": 0.3}],
            "confusion": {"all": conf, "confident": conf}, "wall_s": 1.0,
            "hardware": {"cpu": "test cpu", "torch_threads": 1}, "git_commit": "abcdef1234567890"})


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("rep")
    s = Storage(str(root / "results"))
    recs = [rec("batch_size", str(b), i, a + 0.01 * i, labeler="sne", batch_size=b)
            for b, a in ((64, 0.7), (256, 0.8)) for i in range(2)]
    recs += [rec("block_depth", "#3", i, 0.8 + 0.01 * i, labeler="sne") for i in range(2)]
    recs += [rec("seeds", "LSD-C", i, 0.8 + 0.01 * i) for i in range(2)]
    for r in recs:
        s.write_json(f"{r['study']}/records/{r['key']}.json", r)
    out = root / "out"
    out.mkdir()
    assert main(["--storage", s.root, "--out", str(out / "tables.md")]) == 0
    html = (out / "report.html").read_text(encoding="utf-8")
    md = (out / "tables.md").read_text(encoding="utf-8")
    pngs = sorted(os.listdir(out / "figures"))
    return out, html, md, pngs


def n_tables_md(md):
    return sum(1 for ln in md.splitlines() if re.match(r"^\|[-|: ]+\|$", ln))


def test_report_is_one_self_contained_file(report):
    out, html, md, pngs = report
    assert len(pngs) >= 5           # batch-size curve, bars, training curves, Figure 1
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:image/png;base64,|#)""", html)   # nothing from elsewhere
    assert "<link" not in html and "@import" not in html and "url(" not in html and "<script src" not in html
    srcs = re.findall(r'<img src="data:image/png;base64,([^"]+)"', html)
    assert len(srcs) == html.count("<img") == len(pngs)
    assert all(base64.b64decode(s)[:8] == b"\x89PNG\r\n\x1a\n" for s in srcs)
    assert html.count("<table") == n_tables_md(md) >= 6
    h2 = re.findall(r'<h2 id="(s\d+)">', html)
    assert len(h2) == md.count("\n## ") and all(f'href="#{a}"' in html for a in h2)
    for line in md.splitlines():
        if line.startswith("_commit "):                                  # every provenance footer
            assert line.strip("_").split(";")[0] in html
    assert "How to read the statistics" in html and "No correction for multiple comparisons" in html


def _chromium(args, tmp_path):
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.mark.pipeline
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium; .ci/run does)")
def test_report_in_a_real_browser(report, tmp_path):
    out, html, md, pngs = report
    url = "file://" + str(out / "report.html")
    dom = _chromium(["--dump-dom", url], tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = dom.stdout
    assert page.count("<table") == n_tables_md(md)
    imgs = re.findall(r"<img[^>]*>", page)
    assert len(imgs) == len(pngs)
    assert all('data-ok="1"' in i for i in imgs), [i[-40:] for i in imgs if 'data-ok="1"' not in i]
    shot = tmp_path / "shot.png"
    r = _chromium([f"--screenshot={shot}", "--window-size=1280,2400", url], tmp_path)
    assert r.returncode == 0 and shot.exists(), r.stderr[-2000:]
    from PIL import Image
    im = Image.open(shot).convert("RGB")
    assert im.size == (1280, 2400)
    assert len(im.getcolors(maxcolors=1 << 20) or []) > 50                 # text, tables and figures drawn


@pytest.mark.pipeline
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium; .ci/run does)")
def test_the_browser_check_catches_a_broken_image(report, tmp_path):
    out, html, _, _ = report
    broken = re.sub(r'src="data:image/png;base64,[^"]+"', 'src="data:image/png;base64,AAAA"', html, count=1)
    page = tmp_path / "broken.html"
    page.write_text(broken, encoding="utf-8")
    dom = _chromium(["--dump-dom", "file://" + str(page)], tmp_path)
    imgs = re.findall(r"<img[^>]*>", dom.stdout)
    assert sum('data-ok="0"' in i for i in imgs) == 1 and sum('data-ok="1"' in i for i in imgs) == len(imgs) - 1
