"""Every study of the supplement (and ours), declared once: the scripts in ``studies/`` run
them and :mod:`lsdc.tables` renders them. Paper values are the supplement's ACC (%), ``paper_n``
the supplement's number of seeds behind each of them, ``reference`` the column that the tables
compare the others with."""
from __future__ import annotations

from .config import ConfigError, preset
from .planning import Study, Variant

C10, C100 = "cifar10", "cifar100-20"

BATCH_SIZE = Study(
    name="batch_size", title="Table 5: impact of batch size (SNE)",
    description="Every other hyperparameter from the dataset's Table 1 preset.",
    base={"labeler": "sne"},
    variants=tuple(Variant(str(b), {"batch_size": b}, seeds=10 if b == 256 else 2) for b in (64, 128, 256, 512)),
    debug_variant=2,
    paper={C10: {"64": "72.4±1.3", "128": "76.9±1.5", "256": "81.7±0.9", "512": "80.9±1.2"},
           C100: {"64": "46.2±0.2", "128": "42.2±0.0", "256": "42.3±1.0", "512": "31.9±1.0"}},
    paper_note="two seeds, except 256: ten",
    paper_n={ds: {"64": 2, "128": 2, "256": 10, "512": 2} for ds in (C10, C100)},
    reference="256",
)

def preset_labeler_column(dataset: str) -> str | None:
    """The labeler study's reference: the column of the dataset preset's labeler (kNN for cifar10,
    digits...); None for a dataset without a preset (an .npz file)."""
    from .registry import LABELERS, RegistryError
    try:
        return LABELERS.get(preset(dataset).get("labeler")).display
    except (ConfigError, RegistryError, KeyError):
        return None


def _labeler_study() -> Study:
    """Every registered labeler with its preset parameters for the dataset (columns without
    them are skipped): a new labeler joins this study by registering."""
    from .registry import LABELERS
    entries = LABELERS.entries()
    return Study(
        name="labeler", title="Labelers: " + " / ".join(e.display for e in entries) + " pairwise labels",
        description="Each labeler with its Table 1 parameters for the dataset (columns without them are skipped).",
        variants=tuple(Variant(e.display, {"labeler": e.name}, requires=e.param_names) for e in entries),
        debug_variant=next((i for i, e in enumerate(entries) if e.name == "knn"), 0),
        reference=preset_labeler_column)

LOSSES = Study(
    name="losses", title="Table 2: impact of the different losses",
    description="k-means on the pretrained features; LSD-C (kNN); without the MSE term; with a non-linear head.",
    base={"labeler": "knn"},
    variants=(Variant("K-means", kind="kmeans"),
              Variant("Ours (kNN)", {}, seeds=10),
              Variant("w/o MSE", {"use_mse": False}),
              Variant("w/ non-lin.", {"head": "mlp"})),
    debug_variant=1,
    paper={C10: {"K-means": "14.3", "Ours (kNN)": "81.7", "w/o MSE": "80.2", "w/ non-lin.": "82.0"},
           C100: {"K-means": "9.1", "Ours (kNN)": "40.5", "w/o MSE": "39.2", "w/ non-lin.": "38.6"}},
    paper_note="one seed each; K-means on RotNet features",
    paper_n={ds: {"K-means": 1, "Ours (kNN)": 1, "w/o MSE": 1, "w/ non-lin.": 1} for ds in (C10, C100)},
    reference="Ours (kNN)",
)

BLOCK_DEPTH = Study(
    name="block_depth", title="Table 3: impact of the number of trainable weights (SNE)",
    description="Trainable from macro block #2 (layer3+layer4+head), #3 (layer4+head), #4 (head only).",
    base={"labeler": "sne"},
    variants=(Variant("#2", {"freeze_from": 2}), Variant("#3", {"freeze_from": 3}, seeds=10),
              Variant("#4 (linear layer)", {"freeze_from": 4})),
    debug_variant=1,
    paper={C10: {"#2": "53.6±1.4", "#3": "81.7±0.9", "#4 (linear layer)": "14.7±0.0"},
           C100: {"#2": "30.6±0.4", "#3": "42.3±1.0", "#4 (linear layer)": "10.8±0.1"}},
    paper_note="two seeds, except #3: ten",
    paper_n={ds: {"#2": 2, "#3": 10, "#4 (linear layer)": 2} for ds in (C10, C100)},
    reference="#3",
)

_METHODS = (("RotNet", "rotnet"), ("SimCLR", "simclr"), ("MoCo v2", "moco"))
PRETRAINING = Study(
    name="pretraining", title="Table 4: impact of the self-supervised method (trainable from block #3)",
    description="Each pretraining (same augmentation for all, as the supplement) followed by k-means and by "
                "LSD-C (SNE).",
    base={"labeler": "sne", "freeze_from": 3},
    variants=tuple(v for label, m in _METHODS for v in (
        Variant(label, {"pretrain": m}, kind="kmeans", row="K-means"),
        Variant(label, {"pretrain": m}, row="Ours (SNE)", seeds=10 if m == "rotnet" else 2))),
    debug_variant=1,
    paper={C10: {("K-means", "RotNet"): "14.3", ("K-means", "SimCLR"): "59.45", ("K-means", "MoCo v2"): "45.48",
                 ("Ours (SNE)", "RotNet"): "81.7", ("Ours (SNE)", "SimCLR"): "43.5",
                 ("Ours (SNE)", "MoCo v2"): "23.7"}},
    paper_note="CIFAR-10 only; one seed, except RotNet: ten",
    paper_n={C10: {(row, m): 10 if (row, m) == ("Ours (SNE)", "RotNet") else 1
                   for row in ("K-means", "Ours (SNE)") for m, _ in _METHODS}},
    reference="RotNet",
)

MIXING = Study(
    name="mixing", title="Mixing: RICAP target (reference vs corrected), MixUp, none (ours)",
    description="RICAP with the reference code's target mixing (permutes the clean index) and with the "
                "corrected one; MixUp with weight decay 1e-4 as the supplement says; no mixing. "
                "No published work has measured the reference code's choice.",
    variants=(Variant("RICAP (reference)", {"mixing": "ricap", "ricap_target": "reference"}),
              Variant("RICAP (corrected)", {"mixing": "ricap", "ricap_target": "corrected"}),
              Variant("MixUp", {"mixing": "mixup", "weight_decay": 1e-4}),
              Variant("none", {"mixing": "none"})),
    reference="RICAP (reference)",
)

SEEDS = Study(
    name="seeds", title="Headline configuration over ten seeds",
    description="The dataset's preset (Table 1, kNN labels where the table gives k) over 10 seeds; "
                "also the source of Figure 1.",
    variants=(Variant("LSD-C", {}, seeds=10),),
    paper={C10: {"LSD-C": "81.7±0.9"}, C100: {"LSD-C": "42.3±1.0"}},
    paper_note="Table 3/5's ten-seed row (SNE)",
    paper_n={C10: {"LSD-C": 10}, C100: {"LSD-C": 10}},
)

PRECISION = Study(
    name="precision", title="Numerical precision: bf16, TF32 and fp32 side by side",
    description="The dataset's preset in each precision: ACC, images/s, and how the pairwise labels agree with "
                "those the same model gives in fp32 (at each evaluation, on a fixed sample: fraction of pairs that "
                "differ, Jaccard index of the positive pairs). fp32 is the reference code's numerics and the "
                "default; on CPUs TF32 computes in fp32.",
    variants=(Variant("fp32", {"precision": "fp32"}), Variant("TF32", {"precision": "tf32"}),
              Variant("bf16", {"precision": "bf16"})),
    debug_variant=2,
    reference="fp32",
)

ORDER = ("batch_size", "labeler", "losses", "block_depth", "pretraining", "mixing", "precision", "seeds")


def __getattr__(name: str):
    # the labeler study reads the labeler registry, which loads torch: built on first use
    if name == "LABELER":
        return _labeler_study()
    if name == "STUDIES":
        fixed = {s.name: s for s in (BATCH_SIZE, LOSSES, BLOCK_DEPTH, PRETRAINING, MIXING, PRECISION, SEEDS)}
        return {n: fixed[n] if n in fixed else _labeler_study() for n in ORDER}
    raise AttributeError(f"module 'lsdc.studies' has no attribute {name!r}")

# Figure 1 of the supplement (CIFAR-10, kNN): confident samples (max probability > 0.9).
FIGURE1_PAPER = {C10: {"confident_frac": 60.0, "confident_acc": 94.0}}
