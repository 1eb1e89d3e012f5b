"""The statistics in the tables: Welch vs the paper, differences from each study's reference column with
95 % CIs, seeds needed for 80 % power, the lossy-data flag; and the declarations they rely on."""
import re

import numpy as np
import pytest
from scipy import stats as sps

from lsdc.config import make_config, presets
from lsdc.records import seal
from lsdc.stats import EXPLANATIONS, pooled_sd, seeds_needed
from lsdc.storage import Storage
from lsdc.studies import STUDIES
from lsdc.tables import LOSSY_NOTE, reference_label, render


def rec(study, variant, seed, acc, row="", kind="trial", lossy=None, dataset="cifar10", **cfg):
    c = make_config(dataset, seed=seed, **cfg).to_dict()
    r = {"schema": 1, "kind": kind, "study": study, "variant": variant, "row": row, "dataset": dataset,
         "seed": seed, "config": c, "status": "finished", "final": {"acc": acc, "nmi": 0.5, "ari": 0.4},
         "history": [{"epoch": 1, "acc": acc - 0.05, "loss": 0.4}, {"epoch": 2, "acc": acc, "loss": 0.3}]
         if kind == "trial" else [],
         "confusion": None, "wall_s": 1.0, "hardware": {"cpu": "test cpu", "torch_threads": 1},
         "git_commit": "abcdef1234567890"}
    if lossy is not None:
        r["data"] = {"source": "jpeg copy", "lossy": lossy}
    return seal(r)


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    root = tmp_path_factory.mktemp("st")
    s = Storage(str(root / "results"))
    recs = [rec("batch_size", "256", i, a, labeler="sne") for i, a in enumerate((0.80, 0.81, 0.85))]
    recs += [rec("batch_size", "64", i, a, labeler="sne", batch_size=64) for i, a in enumerate((0.50, 0.52))]
    recs += [rec("batch_size", "128", i, a, labeler="sne", batch_size=128) for i, a in enumerate((0.83, 0.79))]
    recs += [rec("batch_size", "512", i, a, labeler="sne", batch_size=512, lossy=True) for i, a in enumerate((0.7, 0.72))]
    recs += [rec("losses", "Ours (kNN)", i, a, labeler="knn") for i, a in enumerate((0.80, 0.82))]
    recs += [rec("pretraining", m, i, a, row="Ours (SNE)", labeler="sne", freeze_from=3, pretrain=p)
             for m, p, accs in (("RotNet", "rotnet", (0.80, 0.82, 0.81)), ("SimCLR", "simclr", (0.40, 0.44)))
             for i, a in enumerate(accs)]
    recs += [rec("pretraining", m, i, a, row="K-means", kind="kmeans", labeler="sne", freeze_from=3, pretrain=p)
             for m, p, accs in (("RotNet", "rotnet", (0.14, 0.15)), ("SimCLR", "simclr", (0.60, 0.58)))
             for i, a in enumerate(accs)]
    recs += [rec("labeler", lab, i, a, labeler=name) for lab, name, accs in
             (("cosine", "cosine", (0.70, 0.72)), ("SNE", "sne", (0.75, 0.74)), ("kNN", "knn", (0.80, 0.81)))
             for i, a in enumerate(accs)]
    for r in recs:
        s.write_json(f"{r['study']}/records/{r['key']}.json", r)
    out, bad = render(s, str(root / "tables.md"))
    assert not bad
    return out


def section(text, start, end):
    return text[text.index(start):text.index(end)]


def line_of(t, start):
    """The first table line that starts with ``start``, with tabulate's padding removed."""
    lines = [re.sub(r" *\| *", " | ", ln).strip() for ln in t.splitlines()]
    return next(ln for ln in lines if ln.startswith(start))


def test_welch_against_the_paper_in_the_cells(text):
    t5 = section(text, "## Table 5", "## Labelers")
    row = line_of(t5, "| cifar10 ")
    a = [80.0, 81.0, 85.0]
    p = sps.ttest_ind_from_stats(np.mean(a), np.std(a, ddof=1), 3, 81.7, 0.9, 10, equal_var=False).pvalue
    assert f"82.0 ± {np.std(a, ddof=1):.1f} (3) · paper 81.7±0.9 Δ +0.3 p {p:.3f}" in row and p > 0.05
    p64 = sps.ttest_ind_from_stats(51.0, np.std([50, 52], ddof=1), 2, 72.4, 1.3, 2, equal_var=False).pvalue
    assert p64 < 0.05 and f"51.0 ± 1.4 (2) · paper 72.4±1.3 Δ -21.4 p {p64:.3f} *" in row
    stats_rows = [ln for ln in t5.splitlines() if "paper 81.7±0.9 (n=10)" in ln]
    assert len(stats_rows) == 1


def test_a_one_seed_paper_cell_cannot_be_tested(text):
    t2 = section(text, "## Table 2", "## Table 3")
    assert "81.0 ± 1.4 (2) · paper 81.7 (the paper has 1 seed: no test)" in line_of(t2, "| cifar10 ")
    st = line_of(t2, "| cifar10 | Ours (kNN) | paper 81.7 (n=1)")
    assert "no test: the paper has 1 seed" in st


def test_differences_from_the_reference_with_ci_and_seeds_needed(text):
    t5 = section(text, "## Table 5", "## Labelers")
    ref = [80.0, 81.0, 85.0]
    m, sd = np.mean(ref), np.std(ref, ddof=1)
    r64 = sps.ttest_ind_from_stats(51.0, np.std([50, 52], ddof=1), 2, m, sd, 3, equal_var=False)
    se = np.sqrt(2.0 / 2 + sd ** 2 / 3)
    df = se ** 4 / ((2.0 / 2) ** 2 / 1 + (sd ** 2 / 3) ** 2 / 2)
    lo, hi = -31.0 - sps.t.ppf(0.975, df) * se, -31.0 + sps.t.ppf(0.975, df) * se
    row = line_of(t5, "| cifar10 | 64 | 256 (reference)")
    assert "256 (reference)" in row and "-31.0" in row and f"[{lo:+.1f}, {hi:+.1f}]" in row
    assert (f"{r64.pvalue:.3f} *" in row or "< 0.001 *" in row) and "— (significant)" in row
    row128 = line_of(t5, "| cifar10 | 128 | 256 (reference)")
    need = seeds_needed(81.0 - m, pooled_sd(np.std([83, 79], ddof=1), sd))
    assert need and need > 3 and row128.endswith(f" {need} |")
    with pytest.raises(StopIteration):                          # the reference is not compared with itself
        line_of(t5, "| cifar10 | 256 | 256 (reference)")


def test_reference_within_each_row_and_from_the_preset(text):
    t4 = section(text, "## Table 4", "## Mixing")
    ours = line_of(t4, "| cifar10 | Ours (SNE) | SimCLR | RotNet (reference)")
    assert "-39.0" in ours
    km = line_of(t4, "| cifar10 | K-means | SimCLR | RotNet (reference)")
    assert "+44.5" in km
    lab = section(text, "## Labelers", "## Table 2")
    assert line_of(lab, "| cifar10 | cosine | kNN (reference)") and line_of(lab, "| cifar10 | SNE | kNN (reference)")


def test_lossy_cells_are_flagged(text):
    t5 = section(text, "## Table 5", "## Labelers")
    row = line_of(t5, "| cifar10 ")
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[4].endswith("‡") and not any(c.endswith("‡") for c in cells[1:4])
    assert LOSSY_NOTE in t5 and LOSSY_NOTE not in section(text, "## Table 2", "## Table 3")


def test_the_statistics_are_explained_once_under_the_first_table(text):
    for e in EXPLANATIONS:
        assert text.count(e) == 1
    assert text.index(EXPLANATIONS[0]) < text.index("## Labelers")
    assert "No correction for multiple comparisons" in text


def test_declarations_paper_n_and_reference():
    for s in STUDIES.values():
        for ds, cells in s.paper.items():
            assert set(s.paper_n.get(ds, {})) == set(cells), (s.name, ds)
            assert all(isinstance(n, int) and n >= 1 for n in s.paper_n[ds].values())
    assert STUDIES["batch_size"].paper_n["cifar10"]["256"] == 10 and STUDIES["batch_size"].paper_n["cifar10"]["64"] == 2
    assert STUDIES["losses"].paper_n["cifar100-20"]["w/o MSE"] == 1
    assert STUDIES["pretraining"].paper_n["cifar10"][("Ours (SNE)", "RotNet")] == 10
    want = {"batch_size": "256", "block_depth": "#3", "losses": "Ours (kNN)", "pretraining": "RotNet",
            "mixing": "RICAP (reference)", "seeds": None}
    for name, ref in want.items():
        assert reference_label(STUDIES[name], "cifar10") == ref, name
    names = {"cosine": "cosine", "sne": "SNE", "knn": "kNN"}
    for ds, p in presets().items():
        assert reference_label(STUDIES["labeler"], ds) == names[p["labeler"]], ds
    assert reference_label(STUDIES["labeler"], "stl10") == "SNE"
