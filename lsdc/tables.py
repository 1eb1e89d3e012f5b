"""Markdown tables (and Figure 1) from stored records, in the supplement's layout.

Reads only the storage (no cluster). Each cell is ``mean ± std (n)`` of the last-epoch ACC
in percent over the finished records of that cell, with the paper's value beside it where
the paper has one; diverged trials are counted apart, never averaged. A study without
records is listed as not run, a cell without records shows "—": nothing is filled in.
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

from . import studies as studies_mod
from .config import ConfigError, make_config, presets
from .planning import Study, Variant
from .records import NOT_FINGERPRINTED, read_records
from .storage import Storage, StorageError
from .studies import FIGURE1_PAPER

DASH = "—"
PAPER_ORDER = ("cifar10", "cifar100-20", "stl10", "mnist", "reuters10k")


def records_frame(records: Iterable[dict]) -> pd.DataFrame:
    """One row per record: study, variant, row, dataset, seed, status, acc (%), setting."""
    rows = []
    for r in records:
        c = r["config"]
        acc = (r.get("final") or {}).get("acc")
        rows.append({
            "study": r["study"], "variant": r["variant"], "row": r.get("row", ""), "kind": r.get("kind", "trial"),
            "dataset": r["dataset"], "seed": r["seed"], "status": r["status"],
            "acc": 100.0 * acc if acc is not None else math.nan,
            "nmi": (r.get("final") or {}).get("nmi"), "ari": (r.get("final") or {}).get("ari"),
            "confident_frac": _pct((r.get("final") or {}).get("confident_frac")),
            "confident_acc": _pct((r.get("final") or {}).get("confident_acc")),
            "epochs": c.get("epochs"), "pretrain_epochs": c.get("pretrain_epochs"),
            "commit": (r.get("git_commit") or "unknown")[:12], "hardware": _hw(r),
            "wall_s": r.get("wall_s"), "key": r.get("key"), "config": c,
            "fingerprint": (r.get("data") or {}).get("fingerprint"),
            "precision": r.get("precision") or c.get("precision"),
        })
    cols = ["study", "variant", "row", "kind", "dataset", "seed", "status", "acc", "nmi", "ari", "confident_frac",
            "confident_acc", "epochs", "pretrain_epochs", "commit", "hardware", "wall_s", "key", "config",
            "fingerprint", "precision"]
    return pd.DataFrame(rows, columns=cols)


def _pct(v):
    return 100.0 * v if isinstance(v, (int, float)) and v is not None and math.isfinite(v) else math.nan


def _hw(r: dict) -> str:
    h = r.get("hardware") or {}
    if h.get("gpu"):
        return h["gpu"]
    return f"{h.get('cpu', 'cpu')} ({h.get('torch_threads', '?')} thread(s))"


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
    d["__data"], d["__precision"] = fingerprint, _precision(precision)
    return json.dumps(d, sort_keys=True)


def _precision(p: str | None) -> str | None:
    return "fp32" if p in (None, "auto") else p   # lsdc 0.1 recorded "auto", which was fp32 on CPUs


def _setting_label(dataset: str, cfg: dict | None, varied: set[str], base: dict, fingerprint: str | None = None,
                   precision: str | None = None, mixed_data: bool = False) -> str:
    """The dataset, what the setting changes from the study's preset configuration, and the
    data and precision whenever they tell rows apart."""
    name = os.path.basename(str(dataset))
    diffs = _diffs(dataset, cfg, varied, base) if cfg else []
    if cfg and _precision(precision) != "fp32":
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


def study_table(study: Study, df: pd.DataFrame) -> tuple[str, list[str]]:
    """The markdown of one study and its provenance lines.

    Rows are (dataset, setting): records that differ in anything but the seed and the study's
    own axes never share a cell; each row's label names what it changes from the preset."""
    sub = df[df["study"] == study.name].copy()
    two_axis = len(study.rows) > 1
    varied = {k for v in study.variants for k in v.overrides}
    sub["setting"] = [_setting(c, varied, f, p) for c, f, p in zip(sub["config"], sub["fingerprint"],
                                                                  sub["precision"])]
    datasets = [d for d in PAPER_ORDER if d in study.paper] + \
        sorted(d for d in sub["dataset"].unique() if d not in study.paper)
    header = ["dataset"] + (["method"] if two_axis else []) + study.labels
    body = []
    for ds in datasets:
        s_ds = sub[sub["dataset"] == ds]
        groups = [(None, s_ds)] if s_ds.empty else list(s_ds.groupby("setting", sort=True))
        mixed = s_ds["fingerprint"].dropna().nunique() > 1
        for _, s in groups:
            first = s.iloc[0] if len(s) else None
            label = _setting_label(ds, first["config"] if first is not None else None, varied, study.base,
                                   first["fingerprint"] if first is not None else None,
                                   first["precision"] if first is not None else None, mixed)
            for row in study.rows:
                line = [label] + ([row] if two_axis else [])
                for col in study.labels:
                    c = s[(s["variant"] == col) & (s["row"] == row)]
                    text = cell(c.loc[c["status"] == "finished", "acc"], int((c["status"] == "diverged").sum()))
                    paper = study.paper.get(ds, {}).get((row, col) if two_axis else col)
                    if paper:
                        text += f" · paper {paper}"
                    line.append(text)
                body.append(line)
    md = tabulate(body, headers=header, tablefmt="github")
    return md, provenance(sub)


def provenance(sub: pd.DataFrame) -> list[str]:
    if sub.empty:
        return []
    commits = Counter(sub["commit"])
    hw = Counter(sub["hardware"])
    trials = sub[sub["kind"] == "trial"]
    eps = sorted(int(e) for e in trials["epochs"].dropna().unique())
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
    return tabulate(body, headers=head, tablefmt="github")


def seeds_table(df: pd.DataFrame) -> str | None:
    sub = df[(df["study"] == "seeds")]
    if sub.empty:
        return None
    body = []
    sub = sub.assign(setting=[_setting(c, set(), f, p) for c, f, p in zip(sub["config"], sub["fingerprint"],
                                                                          sub["precision"])])
    for (ds, _), s in sub.groupby(["dataset", "setting"], sort=False):
        ok = s[s["status"] == "finished"]
        paper = studies_mod.SEEDS.paper.get(ds, {}).get("LSD-C", DASH)
        fig = FIGURE1_PAPER.get(ds, {})
        first = s.iloc[0]
        body.append([_setting_label(ds, first["config"], set(), {}, first["fingerprint"], first["precision"]), cell(ok["acc"], int((s["status"] == "diverged").sum())),
                     f"{ok['acc'].min():.1f} / {ok['acc'].max():.1f}" if len(ok) else DASH,
                     cell(ok["nmi"] * 100), cell(ok["ari"] * 100),
                     cell(ok["confident_frac"]) + (f" · paper {fig['confident_frac']:.0f}" if fig else ""),
                     cell(ok["confident_acc"]) + (f" · paper {fig['confident_acc']:.1f}" if fig else ""), paper])
    return tabulate(body, headers=["dataset", "ACC", "min / max", "NMI", "ARI", "confident % (p>0.9)",
                                   "ACC of confident", "paper ACC"], tablefmt="github")


def search_section(storage: Storage) -> str | None:
    if not storage.exists("search"):
        return None
    parts = []
    for name in storage.list("search", ".json"):
        if not name.startswith("best-"):
            continue
        try:
            best = storage.read_json(f"search/{name}")
        except (OSError, ValueError):
            parts.append(f"- {name}: unreadable")
            continue
        top = best.get("top", [])
        rows = [[t.get("rank"), _num(t.get("objective")), _num(t.get("acc")), t.get("epochs_run"),
                 ", ".join(f"{k}={_num(v)}" for k, v in t.get("params", {}).items())] for t in top]
        parts.append(f"**{best.get('dataset')}**, objective `{best.get('objective')}`, "
                     f"{best.get('n_trials')} trials ({best.get('n_pruned', 0)} stopped early by ASHA); "
                     f"rank correlation of the objective with ACC: {best.get('spearman_vs_acc', 'n/a')}\n\n" +
                     tabulate(rows, headers=["rank", "objective", "ACC", "epochs", "parameters"], tablefmt="github"))
    return "\n\n".join(parts) or None


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


def render(storage: Storage, out_path: str, figures_dir: str | None = None) -> tuple[str, list[str]]:
    """The whole markdown document, and the unreadable record paths that were skipped."""
    records, bad = read_records(storage)
    df = records_frame(records)
    doc = ["# LSD-C ablation tables", "",
           f"Generated by `python analysis/make_tables.py` from {len(records)} record(s) in `{storage.uri}`. "
           "Cells: last-epoch clustering ACC (%), `mean ± std (n)` over seeds; `· paper` is the supplement's "
           "value. Figures from the JPEG copy of CIFAR-10 sit somewhat below those on the original PNG data.", ""]
    if bad:
        doc += [f"Skipped {len(bad)} unreadable record(s): " + ", ".join(f"`{b}`" for b in bad), ""]
    doc += ["## Table 1: hyperparameters (the presets in `lsdc/config.py`)", "", table1(), ""]
    STUDIES = studies_mod.STUDIES
    for name, study in STUDIES.items():
        if name == "seeds":
            continue
        doc += [f"## {study.title}", ""]
        if df.empty or (df["study"] == name).sum() == 0:
            doc += [f"*Not run yet*: `python studies/{name}.py` (or `--dataset digits` on a laptop).", ""]
            if study.paper:
                md, _ = study_table(study, df.iloc[0:0] if not df.empty else df)
                doc += ["Paper:", "", md, ""]
            continue
        md, prov = study_table(study, df)
        doc += [md, "", *(f"_{p}_" for p in prov)]
        if study.paper_note:
            doc += [f"_paper: {study.paper_note}_"]
        doc += [""]
    for name in sorted(set(df["study"]) - set(STUDIES) - {"search"}) if not df.empty else []:
        sub = df[df["study"] == name]
        pairs = list(dict.fromkeys(zip(sub["row"], sub["variant"])))
        adhoc = Study(name=name, title=f"Study '{name}' (declared outside lsdc.studies)",
                      variants=tuple(Variant(label=v, row=r) for r, v in pairs))
        md, prov = study_table(adhoc, df)
        doc += [f"## {adhoc.title}", "", md, "", *(f"_{p}_" for p in prov), ""]
    doc += ["## Headline configuration over seeds, and Figure 1", ""]
    st = seeds_table(df) if not df.empty else None
    doc += [st, "", *(f"_{p}_" for p in provenance(df[df["study"] == "seeds"]))] if st else \
        ["*Not run yet*: `python studies/seeds.py`.", ""]
    figs = figure1(records, figures_dir or os.path.join(os.path.dirname(os.path.abspath(out_path)), "figures"))
    for path, r in figs:
        rel = os.path.relpath(path, os.path.dirname(os.path.abspath(out_path)))
        fin = r["final"]
        doc += ["", f"![Figure 1, {r['dataset']}]({rel})", "",
                f"{os.path.basename(r['dataset'])}: {100 * (fin.get('confident_frac') or 0):.1f}% of samples have "
                f"confidence > 0.9, with {100 * (fin.get('confident_acc') or float('nan')):.1f}% ACC "
                f"(study {r['study']}, seed {r['seed']}; paper, CIFAR-10: 60% with 94.0%)."]
    doc += ["", "## Hyperparameter search (Optuna TPE + ASHA)", ""]
    ss = search_section(storage)
    doc += [ss] if ss else ["*Not run yet*: `python studies/search.py`."]
    return "\n".join(doc) + "\n", bad


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python analysis/make_tables.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--storage", default="results", help="where the studies stored their results (path or URI)")
    p.add_argument("--out", default="tables.md", help="markdown file to write")
    p.add_argument("--figures", default=None, help="folder for the PNG figures (default: figures/ beside --out)")
    a = p.parse_args(argv)
    try:
        storage = Storage(a.storage if "://" in a.storage else os.path.abspath(a.storage))
        if storage.is_local and not os.path.isdir(storage.root):
            raise StorageError(f"storage: {storage.root!r} does not exist; run a study first "
                               f"(e.g. python studies/batch_size.py --dataset digits)")
        text, bad = render(storage, a.out, a.figures)
    except StorageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    tmp = a.out + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, a.out)
    print(text)
    for b in bad:
        print(f"warning: skipped unreadable record {b}", file=sys.stderr)
    print(f"wrote {a.out}", file=sys.stderr)
    return 0


__all__ = ["cell", "main", "records_frame", "render", "study_table"]
