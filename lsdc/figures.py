"""Figures of the studies (matplotlib, Agg backend, PNG), from the frames that :mod:`lsdc.tables` prepares.

Every axis says its unit; colours are the Okabe-Ito palette (colour-blind safe), and series also
differ in marker or hatch. Each function returns ``[(path, caption), ...]`` (empty when there is
nothing to draw); nothing is drawn from numbers that are not in the records, except the paper's
points, which are labelled as the paper's.
"""
from __future__ import annotations

import math
import os
import re

import pandas as pd

OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#56B4E9", "#CC79A7", "#000000", "#F0E442")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
HATCHES = ("", "//", "..", "xx", "\\\\", "++", "--", "oo")


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:60] or "x"


def _paper_points(study, dataset_key) -> dict:
    from .stats import parse_paper
    out = {}
    for key, text in study.paper.get(dataset_key, {}).items():
        try:
            out[key] = parse_paper(text)
        except ValueError:
            continue
    return out


def _agg(values: pd.Series) -> tuple[float, float, int]:
    v = values.dropna()
    sd = float(v.std(ddof=1)) if len(v) > 1 else 0.0
    return (float(v.mean()) if len(v) else math.nan), sd, len(v)


def batch_size_curve(study, sub: pd.DataFrame, out_dir: str) -> list[tuple[str, str]]:
    """ACC (%) against batch size (log2 axis), mean ± std over seeds per dataset/setting, the paper's
    points overlaid. ``sub``: the study's finished trials with columns group, cfg_batch_size, acc_pct."""
    if sub.empty or "cfg_batch_size" not in sub:
        return []
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    sizes: set[int] = set()
    i = 0
    for i, (group, s) in enumerate(sub.groupby("group", sort=True)):
        pts = sorted((int(b), *_agg(g["acc_pct"])) for b, g in s.groupby("cfg_batch_size"))
        sizes |= {p[0] for p in pts}
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], color=OKABE_ITO[i % 8],
                    marker=MARKERS[i % 8], capsize=4, label=f"ours: {group}")
        for b, m, _, n in pts:
            ax.annotate(f"n={n}", (b, m), textcoords="offset points", xytext=(6, -12), fontsize=7,
                        color=OKABE_ITO[i % 8])
    for j, ds in enumerate(study.paper):
        pts = sorted((int(k), m, sd or 0.0) for k, (m, sd) in _paper_points(study, ds).items())
        if not pts:
            continue
        sizes |= {p[0] for p in pts}
        c = OKABE_ITO[(i + 1 + j) % 8]
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], color=c, marker=MARKERS[(i + 1 + j) % 8],
                    markerfacecolor="white", linestyle="--", capsize=4, label=f"paper: {ds}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(sizes), [str(s) for s in sorted(sizes)])
    ax.set_xlabel("batch size (images, log2 scale)")
    ax.set_ylabel("clustering ACC (%)")
    ax.set_title("Table 5: ACC against batch size (mean ± std over seeds)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path = os.path.join(out_dir, "batch_size_curve.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [(path, "Table 5 as a curve: last-epoch ACC (%) against batch size, mean with ± std error bars over "
                   "seeds (n beside each point); hollow markers and dashed lines are the paper's values.")]


def bars(study, sub: pd.DataFrame, out_dir: str, xlabel: str = "column of the table") -> list[tuple[str, str]]:
    """Grouped bars: one cluster per column of the study, one bar per (dataset/setting, row), mean ± std
    over seeds; the paper's values as hollow diamonds. ``sub``: finished records with group, row,
    variant, acc_pct."""
    if sub.empty:
        return []
    plt = _plt()
    labels = study.labels
    series = [(g, r) for g in sorted(sub["group"].unique()) for r in study.rows
              if ((sub["group"] == g) & (sub["row"] == r)).any()]
    paper = [(ds, r) for ds in study.paper for r in study.rows
             if any(((r, lab) if len(study.rows) > 1 else lab) in study.paper[ds] for lab in labels)]
    width = 0.8 / max(1, len(series) + len(paper))
    fig, ax = plt.subplots(figsize=(max(6.5, 1.6 * len(labels) + 2), 4.8))
    k = 0
    for k, (g, r) in enumerate(series):
        s = sub[(sub["group"] == g) & (sub["row"] == r)]
        stats = [_agg(s.loc[s["variant"] == lab, "acc_pct"]) for lab in labels]
        xs = [x + (k - (len(series) + len(paper) - 1) / 2) * width for x in range(len(labels))]
        ax.bar(xs, [m for m, _, _ in stats], width, yerr=[sd for _, sd, _ in stats], capsize=3,
               color=OKABE_ITO[k % 8], hatch=HATCHES[k % 8], edgecolor="black", linewidth=0.5,
               label=f"ours: {g}" + (f", {r}" if r else ""))
        for x, (m, _, n) in zip(xs, stats):
            if n:
                ax.annotate(f"n={n}", (x, 0), textcoords="offset points", xytext=(0, 3), ha="center", fontsize=6,
                            rotation=90, color="white" if k % 8 in (0, 6) else "black")
    for j, (ds, r) in enumerate(paper):
        pts = _paper_points(study, ds)
        idx = len(series) + j
        xs, ms, sds = [], [], []
        for x, lab in enumerate(labels):
            p = pts.get((r, lab) if len(study.rows) > 1 else lab)
            if p:
                xs.append(x + (idx - (len(series) + len(paper) - 1) / 2) * width)
                ms.append(p[0])
                sds.append(p[1] or 0.0)
        ax.errorbar(xs, ms, yerr=sds, fmt="D", markerfacecolor="white", color=OKABE_ITO[(k + 1 + j) % 8],
                    capsize=3, label=f"paper: {ds}" + (f", {r}" if r else ""))
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("clustering ACC (%)")
    ax.set_title(f"{study.title} (mean ± std over seeds)", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path = os.path.join(out_dir, f"bars_{study.name}.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [(path, f"{study.title.split(':')[0]} as bars: last-epoch ACC (%), mean with ± std error bars over "
                   "seeds (n at the foot of each bar); hollow diamonds are the paper's values.")]


def training_curves(study, epochs: pd.DataFrame, out_dir: str) -> list[tuple[str, str]]:
    """Per dataset/setting: ACC (%) and training loss against epoch, one line per column (and row):
    the mean over seeds with a min-max band. ``epochs``: per-epoch rows with group, row, variant,
    epoch, acc_pct, loss."""
    if epochs.empty:
        return []
    plt = _plt()
    out = []
    for gi, (group, e) in enumerate(epochs.groupby("group", sort=True)):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        series = [(r, v) for r in study.rows for v in study.labels if ((e["row"] == r) & (e["variant"] == v)).any()]
        for k, (r, v) in enumerate(series):
            s = e[(e["row"] == r) & (e["variant"] == v)]
            n = s["key"].nunique()
            for ax, col in zip(axes, ("acc_pct", "loss")):
                if col not in s or s[col].dropna().empty:
                    continue
                # epochs without the value (not evaluated: eval_every > 1) are left out, not gaps
                g = s.dropna(subset=[col]).groupby("epoch")[col].agg(["mean", "min", "max"]).sort_index()
                c = OKABE_ITO[k % 8]
                ax.plot(g.index, g["mean"], color=c, marker=MARKERS[k % 8], markersize=3,
                        label=f"{(r + ': ') if r else ''}{v} (n={n})")
                ax.fill_between(g.index, g["min"], g["max"], color=c, alpha=0.18, linewidth=0)
        axes[0].set_ylabel("clustering ACC (%)")
        axes[1].set_ylabel("training loss, BCE + w·MSE (no unit)")
        from matplotlib.ticker import MaxNLocator
        for ax in axes:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7, loc="best")
        fig.suptitle(f"{study.title}: {group}, mean over seeds, band = min-max", fontsize=9)
        fig.tight_layout()
        path = os.path.join(out_dir, f"curves_{study.name}_{gi}_{_slug(group)}.png")
        fig.savefig(path, dpi=90)
        plt.close(fig)
        out.append((path, f"Training curves, {group}: ACC (%) at each evaluation (every epoch unless eval_every says otherwise) and the training loss, "
                          "mean over seeds with the min-max band."))
    return out


# per-epoch diagnostics (lsdc.trial): column, axis label, scale to percent
DIAG_PANELS = (("pair_precision", "pair precision (%)", 100.0), ("pair_recall", "pair recall (%)", 100.0),
               ("pos_frac", "positive pairs (% of pairs)", 100.0),
               ("pos_agreement", "positive pairs shared with fp32 (Jaccard, %)", 100.0),
               ("nonempty_clusters", "non-empty clusters", 1.0), ("size_entropy", "entropy of cluster sizes (nats)", 1.0))


def diagnostic_curves(study, epochs: pd.DataFrame, out_dir: str) -> list[tuple[str, str]]:
    """Per dataset/setting: the per-epoch diagnostics (the labeler's pair precision and recall
    against the true classes on a fixed sample, the fraction of positive pairs, their agreement
    with fp32's, the number of non-empty clusters and the entropy of their sizes), one line per
    column (and row), mean over seeds."""
    panels = [p for p in DIAG_PANELS if p[0] in epochs and not epochs[p[0]].dropna().empty]
    if epochs.empty or not panels:
        return []
    plt = _plt()
    from matplotlib.ticker import MaxNLocator
    out = []
    for gi, (group, e) in enumerate(epochs.groupby("group", sort=True)):
        fig, axes = plt.subplots(2, 3, figsize=(13, 7))
        axes = axes.ravel()
        series = [(r, v) for r in study.rows for v in study.labels if ((e["row"] == r) & (e["variant"] == v)).any()]
        for ax, (col, label, scale) in zip(axes, panels):
            for k, (r, v) in enumerate(series):
                s = e[(e["row"] == r) & (e["variant"] == v)]
                if col not in s or s[col].dropna().empty:
                    continue
                g = (s.dropna(subset=[col]).groupby("epoch")[col].mean() * scale).sort_index()
                ax.plot(g.index, g.values, color=OKABE_ITO[k % 8], marker=MARKERS[k % 8], markersize=3,
                        label=f"{(r + ': ') if r else ''}{v} (n={s['key'].nunique()})")
            ax.set_ylabel(label, fontsize=8)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
        for ax in axes[len(panels):]:
            ax.axis("off")
        axes[0].legend(fontsize=7, loc="best")
        fig.suptitle(f"{study.title}: {group}, diagnostics per epoch (labels for analysis only), mean over seeds",
                     fontsize=9)
        fig.tight_layout()
        path = os.path.join(out_dir, f"diagnostics_{study.name}_{gi}_{_slug(group)}.png")
        fig.savefig(path, dpi=80)
        plt.close(fig)
        out.append((path, f"Diagnostics per epoch, {group}: the labeler's positive pairs on a fixed sample against "
                          "the true classes (precision, recall), the fraction of positive pairs and their agreement "
                          "with the pairs in fp32, and the clusters' occupancy (labels used for analysis only)."))
    return out


__all__ = ["OKABE_ITO", "bars", "batch_size_curve", "diagnostic_curves", "training_curves"]
