"""Markdown tables (and figures) from stored records, in the supplement's layout, and one HTML report.

Reads only the storage (no cluster). Each cell is ``mean ± std (n)`` of the last-epoch ACC
in percent over the finished records of that cell, with the paper's value beside it where
the paper has one; diverged trials are counted apart, never averaged. A study without
records is listed as not run, a cell without records shows "—": nothing is filled in.

Statistics (:mod:`lsdc.stats`): where the paper has the cell, our mean minus the paper's with a
two-sided Welch t-test (``*``: p < 0.05; no test where the paper has one seed or no std); below
each table, each column's difference from the study's reference column with its 95 % Welch CI,
and, where not significant, the seeds per column needed for 80 % power. No correction for
multiple comparisons. Cells computed on the lossy CIFAR-10 JPEG copy are marked ``‡``.

:func:`document` builds the report as blocks; :func:`to_markdown` writes ``tables.md`` and
:func:`lsdc.report.to_html` the self-contained ``report.html``; figures come from
:mod:`lsdc.figures` and the tidy frames from :mod:`lsdc.results` (``--csv``).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections import Counter
from typing import Iterable

import pandas as pd
from tabulate import tabulate

from . import results, stats
from . import studies as studies_mod
from .config import ConfigError, make_config, presets
from .planning import Study, Variant
from .records import NOT_FINGERPRINTED, read_records
from .storage import Storage, StorageError
from .studies import FIGURE1_PAPER

DASH = "—"
PAPER_ORDER = ("cifar10", "cifar100-20", "stl10", "mnist", "reuters10k")


def records_frame(records: Iterable[dict]) -> pd.DataFrame:
    """The tidy frame of :func:`lsdc.results.frame` (ACC, NMI, ARI... in percent, ``*_pct``) plus the
    raw ``config`` dict of each record, which the tables group on, its data fingerprint (None:
    not fingerprinted) and the precision that ran."""
    records = list(records)
    df = results.frame(records)
    df["config"] = [r.get("config") or {} for r in records]
    df["fingerprint"] = [(r.get("data") or {}).get("fingerprint") for r in records]
    df["precision"] = [r.get("precision") or (r.get("config") or {}).get("precision") for r in records]
    return df


def cell(values: pd.Series, diverged: int = 0) -> str:
    """``mean ± std (n)`` (std with ddof=1; n = 1 has no std)."""
    v = values.dropna()
    if v.empty:
        text = DASH
    elif len(v) == 1:
        text = f"{v.iloc[0]:.1f} (1)"
    else:
        text = f"{v.mean():.1f} ± {v.std(ddof=1):.1f} ({len(v)})"
    if diverged:
        text += f" +{diverged} diverged"
    return text


IGNORED = ("seed", "device", "compile", "eval_every", "precision")   # how a trial ran, not what it was


def _setting(cfg: dict, varied: set[str], fingerprint: str | None = None, precision: str | None = None) -> str:
    """Everything that must be equal for records to share a table row: the config (but the
    seed and the study's axes), the data's fingerprint and the precision that ran."""
    d = {k: v for k, v in sorted(cfg.items()) if k not in varied and k not in IGNORED}
    if isinstance(d.get("extra"), dict):
        # a varied family's own parameters (RotNet's pretrain_recipe in Table 4) belong to its columns
        own = _family_params(varied)
        d["extra"] = {k: v for k, v in d["extra"].items() if k not in own}
        if not d["extra"]:
            del d["extra"]
    d["__data"] = fingerprint
    if "precision" not in varied:     # a precision study's columns say it already
        d["__precision"] = _precision(precision)
    return json.dumps(d, sort_keys=True)


def _family_params(varied: set[str]) -> set[str]:
    from .registry import FAMILIES
    return {p.name for fam, reg in FAMILIES.items() if fam in varied for e in reg.entries() for p in e.params}


def _precision(p: str | None) -> str | None:
    return "fp32" if p in (None, "auto") else p   # lsdc 0.1 recorded "auto", which was fp32 on CPUs


def _setting_label(dataset: str, cfg: dict | None, varied: set[str], base: dict, fingerprint: str | None = None,
                   precision: str | None = None, mixed_data: bool = False) -> str:
    """The dataset, what the setting changes from the study's preset configuration, and the
    data and precision whenever they tell rows apart."""
    name = os.path.basename(str(dataset))
    diffs = _diffs(dataset, cfg, varied, base) if cfg else []
    if cfg and _precision(precision) != "fp32" and "precision" not in varied:
        diffs.append(f"precision {_precision(precision)}")
    if cfg and fingerprint is None:
        diffs.append(NOT_FINGERPRINTED)
    elif cfg and mixed_data:
        diffs.append(f"data {fingerprint[:8]}")
    return name + (f" ({', '.join(diffs)})" if diffs else "")


def _diffs(dataset: str, cfg: dict, varied: set[str], base: dict) -> list[str]:
    try:
        ref = make_config(dataset, **base).to_dict()
        scaled = make_config(dataset, **base, epochs=cfg["epochs"]).to_dict()
    except (ConfigError, ValueError):
        return []
    diffs = []
    for k, v in cfg.items():
        if k in varied or k in IGNORED or k == "extra":
            continue
        want = scaled.get(k) if k in ("lr_steps", "rampup") else ref.get(k)
        if want != v:
            diffs.append(f"{k} {v if not isinstance(v, list) else ','.join(map(str, v)) or '-'}")
    return diffs


def _groups(study: Study, df: pd.DataFrame) -> list[tuple[str, str, pd.DataFrame]]:
    """The study's (dataset, row label, records) groups in table order: records that differ in anything
    but the seed and the study's own axes never share a group; the label names what the setting
    changes from the preset. A paper dataset without records is one empty group."""
    sub = df[df["study"] == study.name].copy()
    varied = {k for v in study.variants for k in v.overrides}
    sub["setting"] = [_setting(c, varied, f, p) for c, f, p in zip(sub["config"], sub["fingerprint"],
                                                                  sub["precision"])]
    datasets = [d for d in PAPER_ORDER if d in study.paper] + \
        sorted(d for d in sub["dataset"].unique() if d not in study.paper)
    out = []
    for ds in datasets:
        s_ds = sub[sub["dataset"] == ds]
        groups = [(None, s_ds)] if s_ds.empty else list(s_ds.groupby("setting", sort=True))
        mixed = s_ds["fingerprint"].dropna().nunique() > 1
        for _, s in groups:
            first = s.iloc[0] if len(s) else None
            label = _setting_label(ds, first["config"] if first is not None else None, varied, study.base,
                                   first["fingerprint"] if first is not None else None,
                                   first["precision"] if first is not None else None, mixed)
            out.append((ds, label, s))
    return out


def reference_label(study: Study, dataset: str) -> str | None:
    """The study's reference column for ``dataset`` (``Study.reference``: a label or a function of
    the dataset), if it is one of the study's columns."""
    ref = study.reference(dataset) if callable(study.reference) else study.reference
    return ref if ref in study.labels else None


def _summary(values: pd.Series) -> tuple[float, float | None, int]:
    v = values.dropna()
    return (float(v.mean()) if len(v) else math.nan), (float(v.std(ddof=1)) if len(v) > 1 else None), len(v)


def _p(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _paper_test(study: Study, ds: str, key, ours: pd.Series) -> tuple[str | None, int | None, stats.Test | None]:
    """The paper's cell text, its n, and the Welch test of our values against it (None without ours)."""
    text = study.paper.get(ds, {}).get(key)
    n = study.paper_n.get(ds, {}).get(key)
    m, sd, k = _summary(ours)
    if not text or k == 0:
        return text, n, None
    try:
        pm, psd = stats.parse_paper(text)
    except ValueError:
        return text, n, None
    if n is None:
        return text, n, stats.Test(m - pm, reason="the paper's n is not declared")
    return text, n, stats.welch(m, sd, k, pm, psd, n, names=("ours", "the paper"))


def study_grid(study: Study, df: pd.DataFrame) -> tuple[list[str], list[list[str]], list[list[str]], bool]:
    """The study's table (header, body), its statistics rows (long form) and whether any cell is
    computed on the lossy JPEG copy of CIFAR-10."""
    two_axis = len(study.rows) > 1
    header = ["dataset"] + (["method"] if two_axis else []) + study.labels
    body, stat_rows, any_lossy = [], [], False
    for ds, label, s in _groups(study, df):
        ref = reference_label(study, ds)
        for row in study.rows:
            line = [label] + ([row] if two_axis else [])
            ok = s[s["status"] == "finished"]
            for col in study.labels:
                c = s[(s["variant"] == col) & (s["row"] == row)]
                ours = c.loc[c["status"] == "finished", "acc_pct"]
                text = cell(ours, int((c["status"] == "diverged").sum()))
                key = (row, col) if two_axis else col
                paper, paper_n, t = _paper_test(study, ds, key, ours)
                if paper:
                    text += f" · paper {paper}"
                prefix = [label] + ([row] if two_axis else []) + [col]
                if t is not None:
                    text += f" Δ {t.diff:+.1f} p {_p(t.p)}" + (" *" if t.significant else "") if t.p is not None \
                        else f" ({t.reason}: no test)"
                    _, sd, _ = _summary(ours)
                    stat_rows.append(prefix + [f"paper {paper} (n={paper_n if paper_n else '?'})", *_test_cells(t, sd)])
                if c["data_lossy"].fillna(False).astype(bool).any():
                    text += " ‡"
                    any_lossy = True
                line.append(text)
            if ref is not None:
                r = ok[(ok["variant"] == ref) & (ok["row"] == row)]["acc_pct"]
                rm, rsd, rn = _summary(r)
                for col in study.labels:
                    o = ok[(ok["variant"] == col) & (ok["row"] == row)]["acc_pct"]
                    m, sd, n = _summary(o)
                    if col == ref or n == 0 or rn == 0:
                        continue
                    t = stats.welch(m, sd, n, rm, rsd, rn, names=(f"'{col}'", f"'{ref}'"))
                    stat_rows.append([label] + ([row] if two_axis else []) + [col, f"{ref} (reference)",
                                                                               *_test_cells(t, stats.pooled_sd(sd, rsd))])
            body.append(line)
    return header, body, stat_rows, any_lossy


def _test_cells(t: stats.Test, sd: float | None) -> list[str]:
    """Δ, 95 % CI, p, and the seeds per column for 80 % power (where not significant)."""
    if t.p is None:
        return [f"{t.diff:+.1f}", DASH, f"no test: {t.reason}", DASH]
    need = ""
    if not t.significant:
        n = stats.seeds_needed(t.diff, sd)
        need = str(n) if n is not None else (f"> {stats.MAX_SEEDS}" if sd and t.diff else DASH)
    return [f"{t.diff:+.1f}", f"[{t.ci[0]:+.1f}, {t.ci[1]:+.1f}]", _p(t.p) + (" *" if t.significant else ""),
            need or "— (significant)"]


STAT_HEADER = ["compared with", "Δ ACC (points)", "95 % CI", "p (Welch)", "seeds per column for 80 % power"]


def study_table(study: Study, df: pd.DataFrame) -> tuple[str, list[str]]:
    """The markdown of one study and its provenance lines."""
    header, body, _, _ = study_grid(study, df)
    return tabulate(body, headers=header, tablefmt="github"), provenance(df[df["study"] == study.name])


def provenance(sub: pd.DataFrame) -> list[str]:
    if sub.empty:
        return []
    commits = Counter(c[:12] for c in sub["commit"])
    hw = Counter(sub["hardware"])
    trials = sub[sub["kind"] == "trial"]
    eps = sorted(int(e) for e in trials["cfg_epochs"].dropna().unique())
    seeds = sorted(int(s) for s in sub["seed"].unique())
    out = [f"commit {', '.join(f'{c} ({n})' for c, n in commits.most_common())}; "
           f"hardware {', '.join(f'{h} ({n})' for h, n in hw.most_common())}; "
           f"epochs {', '.join(map(str, eps)) or 'n/a'}; seeds {_ranges(seeds)}; "
           f"{len(sub)} records ({int((sub['status'] == 'diverged').sum())} diverged)"]
    return out


def _ranges(xs: list[int]) -> str:
    out, start, prev = [], None, None
    for x in xs + [None]:
        if start is None:
            start = prev = x
        elif x is not None and x == prev + 1:
            prev = x
        else:
            out.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = prev = x
    return ",".join(out)


def table1() -> str:
    return tabulate(_table1_grid()[1], headers=_table1_grid()[0], tablefmt="github")


def _table1_grid() -> tuple[list[str], list[list]]:
    """Supplement Table 1 from the registries: each dataset's preset, one column per
    parameter of every registered labeler (a new labeler adds its columns)."""
    from .registry import LABELERS
    labeler_params = [(e, p) for e in LABELERS.entries() for p in e.params]
    head = ["dataset", "optimizer", "epochs", "lr steps", "lr", "λ", "T"] + \
        [f"{e.display} {p.name.split('_', 1)[-1]}" for e, p in labeler_params] + ["batch", "pretrain"]
    body = []
    for name, p in presets().items():
        def g(k, d="-"):
            v = p.get(k, d)
            return "-" if v is None else v
        body.append([name, g("optimizer"), g("epochs"), ", ".join(map(str, p.get("lr_steps", ()))) or "-",
                     g("lr"), g("lam"), g("rampup")] + [g(q.name) for _, q in labeler_params] +
                    [g("batch_size", 256), f"{p.get('pretrain', 'rotnet')} ({p.get('pretrain_epochs', 200)} ep)"])
    return head, body


def _seeds_grid(df: pd.DataFrame) -> tuple[list[str], list[list[str]]] | None:
    sub = df[(df["study"] == "seeds")]
    if sub.empty:
        return None
    body = []
    sub = sub.assign(setting=[_setting(c, set(), f, p) for c, f, p in zip(sub["config"], sub["fingerprint"],
                                                                          sub["precision"])])
    for (ds, _), s in sub.groupby(["dataset", "setting"], sort=False):
        ok = s[s["status"] == "finished"]
        paper, _, t = _paper_test(studies_mod.SEEDS, ds, "LSD-C", ok["acc_pct"])
        paper = paper or DASH
        if t is not None:
            paper += f" Δ {t.diff:+.1f} p {_p(t.p)}" + (" *" if t.significant else "") if t.p is not None \
                else f" ({t.reason}: no test)"
        if s["data_lossy"].fillna(False).astype(bool).any():
            paper += " ‡"
        fig = FIGURE1_PAPER.get(ds, {})
        first = s.iloc[0]
        body.append([_setting_label(ds, first["config"], set(), {}, first["fingerprint"], first["precision"]),
                     cell(ok["acc_pct"], int((s["status"] == "diverged").sum())),
                     f"{ok['acc_pct'].min():.1f} / {ok['acc_pct'].max():.1f}" if len(ok) else DASH,
                     cell(ok["nmi_pct"]), cell(ok["ari_pct"]),
                     cell(ok["confident_frac_pct"]) + (f" · paper {fig['confident_frac']:.0f}" if fig else ""),
                     cell(ok["confident_acc_pct"]) + (f" · paper {fig['confident_acc']:.1f}" if fig else ""), paper])
    return ["dataset", "ACC", "min / max", "NMI", "ARI", "confident % (p>0.9)", "ACC of confident", "paper ACC"], body


def seeds_table(df: pd.DataFrame) -> str | None:
    g = _seeds_grid(df)
    return tabulate(g[1], headers=g[0], tablefmt="github") if g else None


def _search_blocks(storage: Storage) -> list[tuple]:
    if not storage.exists("search"):
        return []
    out: list[tuple] = []
    for name in storage.list("search", ".json"):
        if not name.startswith("best-"):
            continue
        try:
            best = storage.read_json(f"search/{name}")
        except (OSError, ValueError):
            out.append(("p", f"{name}: unreadable"))
            continue
        top = best.get("top", [])
        rows = [[t.get("rank"), _num(t.get("objective")), _num(t.get("acc")), t.get("epochs_run"),
                 ", ".join(f"{k}={_num(v)}" for k, v in t.get("params", {}).items())] for t in top]
        out.append(("p", f"**{best.get('dataset')}**, objective `{best.get('objective')}`, "
                         f"{best.get('n_trials')} trials ({best.get('n_pruned', 0)} stopped early by ASHA); "
                         f"rank correlation of the objective with ACC: {best.get('spearman_vs_acc', 'n/a')}"))
        out.append(("table", ["rank", "objective", "ACC", "epochs", "parameters"], rows))
    return out


def search_section(storage: Storage) -> str | None:
    blocks = _search_blocks(storage)
    return to_markdown(blocks, ".").strip() or None


def _num(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def figure1(records: list[dict], out_dir: str) -> list[tuple[str, dict]]:
    """Confusion matrices (all / confident samples) of one headline kNN trial per dataset as PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from .data import get_spec
    written = []
    pick: dict[str, dict] = {}
    order = {"seeds": 0, "losses": 1}
    for r in records:
        if r.get("kind") != "trial" or r["status"] != "finished" or not r.get("confusion"):
            continue
        if r["config"].get("labeler") != "knn" or r["study"] not in order:
            continue
        if r["study"] == "losses" and r["variant"] != "Ours (kNN)":
            continue
        # the headline study first, then the setting closest to the preset, then the lowest seed
        rank = (order[r["study"]], len(_diffs(r["dataset"], r["config"], set(), {})), r["seed"])
        cur = pick.get(r["dataset"])
        if cur is None or rank < cur[0]:
            pick[r["dataset"]] = (rank, r)
    pick = {ds: r for ds, (_, r) in pick.items()}
    os.makedirs(out_dir, exist_ok=True)
    for ds, r in sorted(pick.items()):
        try:
            classes = list(get_spec(ds).classes) or [str(i) for i in range(len(r["confusion"]["all"]))]
        except ValueError:
            classes = [str(i) for i in range(len(r["confusion"]["all"]))]
        fig, axes = plt.subplots(1, 2, figsize=(13, 5.8))
        fin = r["final"]
        titles = [f"all samples (ACC {100 * fin['acc']:.1f}%)",
                  f"confidence > 0.9: {100 * (fin.get('confident_frac') or 0):.0f}% of samples "
                  f"(ACC {100 * (fin.get('confident_acc') or float('nan')):.1f}%)"]
        for ax, key, title in zip(axes, ("all", "confident"), titles):
            m = np.asarray(r["confusion"][key])
            ax.imshow(m, cmap="Blues")
            ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right", fontsize=7)
            ax.set_yticks(range(len(classes)), classes, fontsize=7)
            ax.set_xlabel("predicted cluster (matched to a class)")
            ax.set_ylabel("true class")
            ax.set_title(title, fontsize=9)
            if len(classes) <= 12:
                for (i, j), v in np.ndenumerate(m):
                    ax.text(j, i, str(v), ha="center", va="center", fontsize=6,
                            color="white" if v > m.max() / 2 else "black")
        fig.suptitle(f"Figure 1: confusion matrices, {os.path.basename(ds)}, LSD-C (kNN), "
                     f"{r['study']} seed {r['seed']}, {r['config']['epochs']} epochs")
        fig.tight_layout()
        path = os.path.join(out_dir, f"figure1_{os.path.basename(ds).replace('.npz', '')}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append((path, r))
    return written


LOSSY_NOTE = ("‡: computed (at least partly) on the lossy JPEG copy of CIFAR-10 (records whose data is marked "
              "lossy); expect values somewhat below those on the original PNG data.")


BAR_AXES = {"block_depth": "trainable from macro block (Table 3 numbering)",
            "pretraining": "self-supervised pretraining of the backbone"}


def _study_figures(study: Study, df: pd.DataFrame, epochs: pd.DataFrame, out_dir: str) -> list[tuple[str, str]]:
    from . import figures
    groups = _groups(study, df)
    labelled = [s.assign(group=label) for _, label, s in groups if not s.empty]
    if not labelled:
        return []
    sub = pd.concat(labelled)
    fin = sub[sub["status"] == "finished"]
    os.makedirs(out_dir, exist_ok=True)
    out = []
    if study.name == "batch_size":
        out += figures.batch_size_curve(study, fin[fin["kind"] == "trial"], out_dir)
    if study.name in BAR_AXES:
        out += figures.bars(study, fin, out_dir, xlabel=BAR_AXES[study.name])
    ep = epochs[epochs["study"] == study.name].merge(sub[["key", "group"]], on="key", how="inner")
    out += figures.training_curves(study, ep[ep["kind"] == "trial"], out_dir)
    out += figures.diagnostic_curves(study, ep[ep["kind"] == "trial"], out_dir)
    return out


def _mean(values: list) -> float:
    v = [x for x in values if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)]
    return sum(v) / len(v) if v else math.nan


def _fmt(v: float, pct: bool = True, digits: int = 1) -> str:
    return DASH if not math.isfinite(v) else f"{100 * v:.{digits}f}" if pct else f"{v:.{digits}f}"


DIAG_HEADER = ["dataset", "row", "column", "precision", "n", "ACC", "backbone k-means ACC",
               "backbone pair prec.", "pair prec.", "pair recall", "pos. pairs", "pairs ≠ fp32",
               "pos. pairs ∩ fp32", "clusters", "images/s"]


def diagnostics_grid(study: Study, records: list[dict]) -> list[list[str]]:
    """One row per dataset, row, column and precision of a study's finished clustering trials:
    what explains its ACC cell (means over seeds, in %): the backbone's k-means ACC and pair
    precision on the fixed sample before training, the last epoch's pair precision / recall and
    fraction of positive pairs, how the pairs differ from fp32's (fraction of pairs that differ,
    Jaccard index of the positive pairs), the non-empty clusters, and images/s."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        if r.get("study") != study.name or r.get("kind", "trial") != "trial" or r.get("status") != "finished":
            continue
        groups.setdefault((r.get("dataset"), r.get("row", ""), r.get("variant"), r.get("precision")), []).append(r)
    order = {(row, v.label): i for i, v in enumerate(study.variants) for row in [v.row]}
    body = []
    for (ds, row, var, prec), recs in sorted(groups.items(), key=lambda kv: (str(kv[0][0]),
                                                                             order.get(kv[0][1:3], 99), str(kv[0][3]))):
        diag = [r.get("diagnostics") or {} for r in recs]
        bb = [d.get("backbone") or {} for d in diag]
        fin = [d.get("final") or {} for d in diag]
        body.append([os.path.basename(str(ds)), row or "", var, prec or "", str(len(recs)),
                     _fmt(_mean([(r.get("final") or {}).get("acc") for r in recs])),
                     _fmt(_mean([b.get("kmeans_acc") for b in bb])), _fmt(_mean([b.get("pair_precision") for b in bb])),
                     _fmt(_mean([f.get("pair_precision") for f in fin])), _fmt(_mean([f.get("pair_recall") for f in fin])),
                     _fmt(_mean([f.get("pos_frac") for f in fin]), digits=2),
                     _fmt(_mean([f.get("pair_flip_frac") for f in fin]), digits=2),
                     _fmt(_mean([f.get("pos_agreement") for f in fin])),
                     _fmt(_mean([f.get("nonempty_clusters") for f in fin]), pct=False),
                     _fmt(_mean([r.get("images_per_s") for r in recs]), pct=False, digits=0)])
    return body


def document(storage: Storage, out_path: str, figures_dir: str | None = None) -> tuple[list[tuple], list[str], list[dict]]:
    """The whole report as blocks (rendered to markdown by :func:`to_markdown`, to HTML by
    :func:`lsdc.report.to_html`), the unreadable record paths that were skipped, and the records."""
    records, bad = read_records(storage)
    df = records_frame(records)
    epochs = results.epochs_frame(records)
    fig_dir = figures_dir or os.path.join(os.path.dirname(os.path.abspath(out_path)), "figures")
    doc: list[tuple] = [("h1", "LSD-C ablation tables"),
                        ("p", f"Generated by `python analysis/make_tables.py` from {len(records)} record(s) in "
                              f"`{storage.uri}`. Cells: last-epoch clustering ACC (%), `mean ± std (n)` over seeds; "
                              "`· paper` is the supplement's value. Figures from the JPEG copy of CIFAR-10 sit "
                              "somewhat below those on the original PNG data.")]
    if bad:
        doc.append(("p", f"Skipped {len(bad)} unreadable record(s): " + ", ".join(f"`{b}`" for b in bad)))
    doc += [("h2", "Table 1: hyperparameters (the presets in `lsdc/config.py`)"), ("table", *_table1_grid())]
    explained = False
    STUDIES = studies_mod.STUDIES
    for name, study in STUDIES.items():
        if name == "seeds":
            continue
        doc.append(("h2", study.title))
        header, body, stat_rows, lossy = study_grid(study, df)
        if df.empty or (df["study"] == name).sum() == 0:
            doc.append(("p", f"*Not run yet*: `python studies/{name}.py` (or `--dataset digits` on a laptop)."))
            if study.paper:
                doc += [("p", "Paper:"), ("table", header, body)]
        else:
            doc.append(("table", header, body))
            doc += [("note", p) for p in provenance(df[df["study"] == name])]
            if study.paper_note:
                doc.append(("note", f"paper: {study.paper_note}"))
        if lossy:
            doc.append(("note", LOSSY_NOTE))
        if not explained:
            doc += [("p", "How to read the statistics below each table:")] + [("li", e) for e in stats.EXPLANATIONS]
            explained = True
        if stat_rows:
            two_axis = len(study.rows) > 1
            ref = study.reference if isinstance(study.reference, str) else "the preset's column"
            doc += [("p", f"Statistics of ACC (points of %), Welch; reference column: {ref}" +
                          (" (within each row)" if two_axis else "") + ". `*`: p < 0.05, uncorrected."),
                    ("table", ["dataset"] + (["method"] if two_axis else []) + ["column"] + STAT_HEADER, stat_rows)]
        diag = diagnostics_grid(study, records)
        if diag:
            doc += [("p", "Diagnostics (labels for analysis only; means over seeds, %): the backbone before "
                          "clustering (k-means ACC, the labeler's pair precision on a fixed sample), the last "
                          "epoch's pairs against the true classes, their difference from the same model's pairs "
                          "in fp32, the non-empty clusters, and throughput."),
                    ("table", DIAG_HEADER, diag)]
        for path, caption in _study_figures(study, df, epochs, fig_dir):
            doc.append(("img", path, caption, caption))
    for name in sorted(set(df["study"]) - set(STUDIES) - {"search"}) if not df.empty else []:
        sub = df[df["study"] == name]
        pairs = list(dict.fromkeys(zip(sub["row"], sub["variant"])))
        adhoc = Study(name=name, title=f"Study '{name}' (declared outside lsdc.studies)",
                      variants=tuple(Variant(label=v, row=r) for r, v in pairs))
        header, body, _, _ = study_grid(adhoc, df)
        doc += [("h2", adhoc.title), ("table", header, body), *(("note", p) for p in provenance(sub))]
    doc.append(("h2", "Headline configuration over seeds, and Figure 1"))
    st = _seeds_grid(df) if not df.empty else None
    if st:
        doc += [("table", *st), *(("note", p) for p in provenance(df[df["study"] == "seeds"]))]
        stat_rows = study_grid(STUDIES["seeds"], df)[2]
        if stat_rows:
            doc += [("p", "Statistics of ACC (points of %) against the paper, Welch. `*`: p < 0.05, uncorrected."),
                    ("table", ["dataset", "column"] + STAT_HEADER, stat_rows)]
        if df.loc[df["study"] == "seeds", "data_lossy"].fillna(False).astype(bool).any():
            doc.append(("note", LOSSY_NOTE))
        for path, caption in _study_figures(STUDIES["seeds"], df, epochs, fig_dir):
            doc.append(("img", path, caption, caption))
    else:
        doc.append(("p", "*Not run yet*: `python studies/seeds.py`."))
    for path, r in figure1(records, fig_dir):
        fin = r["final"]
        doc.append(("img", path, f"Figure 1, {r['dataset']}",
                    f"{os.path.basename(r['dataset'])}: {100 * (fin.get('confident_frac') or 0):.1f}% of samples have "
                    f"confidence > 0.9, with {100 * (fin.get('confident_acc') or float('nan')):.1f}% ACC "
                    f"(study {r['study']}, seed {r['seed']}; paper, CIFAR-10: 60% with 94.0%)."))
    doc.append(("h2", "Hyperparameter search (Optuna TPE + ASHA)"))
    doc += _search_blocks(storage) or [("p", "*Not run yet*: `python studies/search.py`.")]
    return doc, bad, records


def to_markdown(blocks: list[tuple], out_dir: str) -> str:
    """Markdown of the blocks; images are linked relative to ``out_dir``."""
    lines: list[str] = []
    prev = None
    for b in blocks:
        kind = b[0]
        if prev in ("note", "li") and kind != prev:
            lines.append("")
        if kind in ("h1", "h2", "h3"):
            lines += ["#" * int(kind[1]) + " " + b[1], ""]
        elif kind == "p":
            lines += [b[1], ""]
        elif kind == "note":
            lines.append(f"_{b[1]}_")
        elif kind == "li":
            lines.append(f"- {b[1]}")
        elif kind == "md":
            lines += [b[1], ""]
        elif kind == "table":
            lines += [tabulate(b[2], headers=b[1], tablefmt="github", disable_numparse=True), ""]
        elif kind == "img":
            rel = os.path.relpath(b[1], os.path.abspath(out_dir))
            lines += [f"![{b[2]}]({rel})", "", b[3], ""]
        prev = kind
    return "\n".join(lines).rstrip("\n") + "\n"


def render(storage: Storage, out_path: str, figures_dir: str | None = None) -> tuple[str, list[str]]:
    """The whole markdown document, and the unreadable record paths that were skipped."""
    blocks, bad, _ = document(storage, out_path, figures_dir)
    return to_markdown(blocks, os.path.dirname(os.path.abspath(out_path))), bad


def _write(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python analysis/make_tables.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--storage", default="results", help="where the studies stored their results (path or URI)")
    p.add_argument("--out", default="tables.md", help="markdown file to write; report.html is written beside it")
    p.add_argument("--figures", default=None, help="folder for the PNG figures (default: figures/ beside --out)")
    p.add_argument("--csv", default=None, metavar="DIR",
                   help="also write the tidy frames (lsdc.results) to DIR as results.csv and epochs.csv "
                        "(and .parquet when pyarrow imports)")
    a = p.parse_args(argv)
    for flag, path in (("--csv", a.csv), ("--figures", a.figures)):
        if path is not None and os.path.exists(path) and not os.path.isdir(path):
            print(f"error: {flag}: {path!r} is a file, not a folder", file=sys.stderr)
            return 2
    if os.path.isdir(a.out):
        print(f"error: --out: {a.out!r} is a folder; give a file name such as tables.md", file=sys.stderr)
        return 2
    out_dir = os.path.dirname(os.path.abspath(a.out))
    if not os.path.isdir(out_dir):
        print(f"error: --out: folder {out_dir!r} does not exist", file=sys.stderr)
        return 2
    try:
        storage = Storage(a.storage if "://" in a.storage else os.path.abspath(a.storage))
        if storage.is_local and not os.path.isdir(storage.root):
            raise StorageError(f"storage: {storage.root!r} does not exist; run a study first "
                               f"(e.g. python studies/batch_size.py --dataset digits)")
        blocks, bad, records = document(storage, a.out, a.figures)
    except StorageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from .report import to_html
    text = to_markdown(blocks, out_dir)
    html_path = os.path.join(out_dir, "report.html")
    _write(a.out, text)
    _write(html_path, to_html(blocks, title="LSD-C ablation tables"))
    written = []
    if a.csv is not None:
        try:
            written = results.write(records, a.csv)
        except OSError as e:
            print(f"error: --csv: cannot write to {a.csv!r} ({e.strerror or e})", file=sys.stderr)
            return 2
    print(text)
    for b in bad:
        print(f"warning: skipped unreadable record {b}", file=sys.stderr)
    print(f"wrote {a.out} and {html_path}" + "".join(f", {w}" for w in written), file=sys.stderr)
    return 0


__all__ = ["cell", "document", "main", "records_frame", "reference_label", "render", "study_grid", "study_table",
           "to_markdown"]
