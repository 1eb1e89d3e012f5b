"""Self-supervised pretraining of the backbone (RotNet, SimCLR, MoCo v2), its cache, and the
k-means baseline on a backbone's pooled features.

A pretrained backbone is determined by :func:`backbone_identity` (dataset, split, method,
epochs, seed, batch size, augmentation, architecture, width, shortcut); it is saved once
under ``<cache_dir>/backbones/`` (write, then rename) and reused by every trial with the
same identity. Checkpoints are loaded with ``weights_only=True`` and strictly.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import tempfile
import uuid
import time
import warnings
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import data as data_mod
from .augment import Augmenter
from .config import Env, TrialConfig
from .keys import LEGACY
from .losses import moco_infonce, nt_xent
from .models import CheckpointError, load_error_reason, load_strict, make_backbone
from .registry import PRETRAINS, Param
from .runtime import autocast, configure, resolve_device, resolve_precision

Log = Callable[[str], None]

# RotNet recipe (Gidaris et al.; the authors' released code): lr /5 at 30 %, 60 %, 80 % of training.
ROTNET = dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4, milestones=(60, 120, 160), total=200,
              gamma=0.2)
# RotNet as the LSD-C group trains it (k-han/AutoNovel, selfsupervised_learning.py and
# data/rotationloader.py): the same SGD, MultiStepLR(milestones=[60, 120, 160, 200], gamma=0.2)
# stepped at the START of every epoch (each drop one epoch earlier than lsdc 0.1's per-step
# schedule), trained on the training split, the checkpoint of the epoch with the best rotation
# accuracy on the test split kept, images normalised with the loader's own statistics.
GROUP_MILESTONES = (60, 120, 160, 200)
# data/rotationloader.py's mean_pix / std_pix (x / 255): CIFAR-10 and CIFAR-100 (CIFAR-100-20 is
# CIFAR-100's images). The loader has none for STL-10 or MNIST: those keep lsdc's statistics.
GROUP_NORMALISATION = {
    "cifar10": ((125.3 / 255, 123.0 / 255, 113.9 / 255), (63.0 / 255, 62.1 / 255, 66.7 / 255)),
    "cifar100-20": ((129.3 / 255, 124.1 / 255, 112.4 / 255), (68.2 / 255, 65.4 / 255, 70.4 / 255)),
}
RECIPES = ("group", "lsdc-0.1")
GROUP_DATASETS = ("cifar10", "cifar100-20", "stl10", "mnist")   # canonical test split: "group" by default
# Contrastive recipes (CIFAR settings of the MoCo demo and SimCLR): SGD, lr 0.06 per 256 images, cosine.
CONTRASTIVE = dict(lr_per_256=0.06, momentum=0.9, weight_decay=5e-4, proj_dim=128,
                   simclr_temperature=0.5, moco_temperature=0.2, moco_momentum=0.99, moco_queue=4096,
                   moco_key_splits=4)


def backbone_identity(cfg: TrialConfig, fingerprint: str | None) -> dict:
    """Every field that determines a pretrained backbone, and the fingerprint of the data it
    was pretrained on (a changed file means a new backbone)."""
    spec = cfg.spec
    ident = {"dataset": cfg.dataset, "split": cfg.split, "method": cfg.pretrain, "arch": cfg.arch, "width": cfg.width,
             "shortcut": cfg.shortcut, "in": spec.channels if spec.is_image else spec.size, "data": fingerprint}
    # a parameter at its legacy value (lsdc.keys.LEGACY) stays out, so cached backbones keep their files
    ident.update({p.name: cfg.param(p.name) for p in PRETRAINS.get(cfg.pretrain).params
                  if not (p.name in LEGACY and cfg.param(p.name) == LEGACY[p.name])})
    return ident


def backbone_key(cfg: TrialConfig, fingerprint: str | None) -> str:
    blob = json.dumps(backbone_identity(cfg, fingerprint), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def backbone_path(cfg: TrialConfig, cache_dir: str, fingerprint: str | None) -> str:
    name = os.path.basename(cfg.dataset).replace(".npz", "")
    return os.path.join(os.path.abspath(cache_dir), "backbones",
                        f"{cfg.pretrain}-{name}-{backbone_key(cfg, fingerprint)}.pt")


def _batches(n: int, bs: int, rng: np.random.Generator, device: torch.device):
    perm = torch.from_numpy(rng.permutation(n)).to(device)
    for s in range(n // bs):
        yield perm[s * bs:(s + 1) * bs]


def _save_atomic(obj, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-", suffix=".pt")
    os.close(fd)
    try:
        from .storage import _enospc_hook, fault, file_mode
        _enospc_hook()
        torch.save(obj, tmp)
        os.chmod(tmp, file_mode())     # mkstemp's 0600 would hide the backbone from the team
        fault("backbone-write")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def rotnet_milestones(cfg: TrialConfig) -> list[int]:
    """The epochs of the learning-rate drops, rescaled from 200 epochs to ``pretrain_epochs``."""
    scale = cfg.pretrain_epochs / ROTNET["total"]
    miles = GROUP_MILESTONES if cfg.param("pretrain_recipe") == "group" else ROTNET["milestones"]
    return sorted({max(1, round(m * scale)) for m in miles})


def _rotnet_optimizer(cfg: TrialConfig, params, steps_per_epoch: int):
    """lsdc 0.1: stepped after every SGD step (milestones in steps: the drop at milestone m
    applies from epoch m + 1, 1-based). group: stepped at the start of every epoch, as
    AutoNovel's ``train()`` does (the drop at m applies from epoch m, 1-based)."""
    opt = torch.optim.SGD(params, lr=ROTNET["lr"], momentum=ROTNET["momentum"], nesterov=ROTNET["nesterov"],
                          weight_decay=ROTNET["weight_decay"])
    miles = rotnet_milestones(cfg)
    if cfg.param("pretrain_recipe") == "group":
        return opt, torch.optim.lr_scheduler.MultiStepLR(opt, miles, ROTNET["gamma"])
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [m * steps_per_epoch for m in miles], ROTNET["gamma"])
    return opt, sched


def _contrastive_optimizer(cfg: TrialConfig, params, steps_per_epoch: int):
    lr = CONTRASTIVE["lr_per_256"] * cfg.pretrain_batch_size / 256
    opt = torch.optim.SGD(params, lr=lr, momentum=CONTRASTIVE["momentum"], weight_decay=CONTRASTIVE["weight_decay"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.pretrain_epochs * steps_per_epoch)
    return opt, sched


def _views(aug: Augmenter, cfg: TrialConfig, xb: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return aug.strong(xb, gen) if cfg.pretrain_augment == "strong" else aug.standard(xb, gen)


@torch.no_grad()
def momentum_update(key_net: nn.Module, query_net: nn.Module, m: float) -> None:
    """MoCo's key encoder update: theta_k <- m theta_k + (1 - m) theta_q (parameters only)."""
    for pk, pq in zip(key_net.parameters(), query_net.parameters()):
        pk.mul_(m).add_(pq.detach(), alpha=1 - m)


class MoCoQueue:
    """A fixed-size FIFO of L2-normalised keys (K x D): the newest batch replaces the oldest."""

    def __init__(self, size: int, dim: int, device, generator: torch.Generator | None = None):
        self.keys = F.normalize(torch.randn(size, dim, device=device, generator=generator), dim=1)
        self.ptr = 0

    @torch.no_grad()
    def enqueue(self, k: torch.Tensor) -> None:
        n = min(len(k), len(self.keys))
        pos = (self.ptr + torch.arange(n, device=self.keys.device)) % len(self.keys)
        self.keys[pos] = F.normalize(k[:n].float(), dim=1)
        self.ptr = (self.ptr + n) % len(self.keys)


def rotnet_loss(net: nn.Module, v: torch.Tensor, precision: str = "fp32") -> tuple[torch.Tensor, torch.Tensor]:
    """RotNet on a batch of augmented views (B x C x H x W): each shown at 0/90/180/270
    degrees in one forward of 4B images; returns (cross-entropy, number of correct rotations)."""
    r = torch.cat([v, v.rot90(1, (2, 3)), v.rot90(2, (2, 3)), v.rot90(3, (2, 3))])
    target = torch.arange(4, device=v.device).repeat_interleave(len(v))
    with autocast(v.device, precision):
        logits = net(r.contiguous(memory_format=torch.channels_last))
    return F.cross_entropy(logits.float(), target), (logits.argmax(1) == target).sum()


class _Projector(nn.Module):
    def __init__(self, dim: int, out: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, out))

    def forward(self, x):
        return self.net(x)


# --------------------------------------------------------------------- the methods
# A pretraining method is a class registered in lsdc.registry.PRETRAINS. It is built with
# (cfg, backbone, ctx) where ctx holds the device, precision, augmenter and random streams,
# exposes ``net`` (the module whose parameters are trained; its first child is the backbone)
# and ``optimizer(cfg, steps_per_epoch)``, and computes ``loss(xb) -> (loss, hits or None)``
# on a batch of raw uint8 samples. ``summary(hits, seen)`` adds to the epoch's log line.
_PRETRAIN_PARAMS = [
    Param("pretrain_epochs", int, lo=1, default=200, help="epochs of self-supervised pretraining"),
    Param("pretrain_seed", int, lo=0, default=0, help="seed of the pretraining"),
    Param("pretrain_batch_size", int, lo=2, default=128, help="images per pretraining step"),
    Param("pretrain_augment", str, choices=("standard", "strong"), default="standard",
          help="standard: crop + flip (Table 4: the same for all methods); strong: SimCLR's"),
]


class _Context:
    def __init__(self, device, precision, aug, gen, rng, n):
        self.device, self.precision, self.aug, self.gen, self.rng, self.n = device, precision, aug, gen, rng, n


def _check_recipe(c) -> str | None:
    if c.pretrain == "rotnet" and c.param("pretrain_recipe") == "group" and \
            not {"train", "test"} <= set(c.spec.splits):
        return (f"pretrain_recipe: 'group' pretrains on the training split and selects on the test split, "
                f"and {c.dataset!r} has no such splits; allowed here: lsdc-0.1")
    return None


@PRETRAINS.register(
    "rotnet", label="RotNet", needs_images=True, check=_check_recipe,
    params=_PRETRAIN_PARAMS + [Param(
        "pretrain_recipe", str, choices=RECIPES, default="lsdc-0.1",
        help="group: the LSD-C group's RotNet (k-han/AutoNovel): training split only, the epoch with the best "
             "test-split rotation accuracy, the loader's normalisation, lr drops one epoch earlier; "
             "lsdc-0.1: the trial's split, the last epoch, lsdc's normalisation, per-step schedule")],
    presets={d: {"pretrain_recipe": "group"} for d in GROUP_DATASETS})
class RotNet:
    """RotNet (Gidaris et al.): predict which of 4 rotations an image shows."""
    step_per_batch = True       # the scheduler steps after every SGD step (lsdc 0.1) ...

    def __init__(self, cfg: TrialConfig, backbone: nn.Module, ctx: _Context):
        self.cfg, self.ctx = cfg, ctx
        self.net = nn.Sequential(backbone, nn.Linear(backbone.feat_dim, 4))
        if cfg.param("pretrain_recipe") == "group":
            self.step_per_batch = False   # ... or at the start of every epoch (the group's code)

    @torch.no_grad()
    def accuracy(self, x: torch.Tensor, aug: Augmenter, batch: int = 1024) -> float:
        """Rotation accuracy (eval mode, plain images, each at its 4 rotations) on uint8 images:
        the group's test-split criterion (no class labels involved)."""
        self.net.eval()
        hits = 0
        for i in range(0, len(x), batch):
            _, h = rotnet_loss(self.net, aug.plain(x[i:i + batch]), self.ctx.precision)
            hits += int(h)
        self.net.train()
        return hits / (4 * max(len(x), 1))

    def optimizer(self, cfg: TrialConfig, steps_per_epoch: int):
        return _rotnet_optimizer(cfg, self.net.parameters(), steps_per_epoch)

    def loss(self, xb: torch.Tensor):
        return rotnet_loss(self.net, _views(self.ctx.aug, self.cfg, xb, self.ctx.gen), self.ctx.precision)

    @staticmethod
    def summary(hits: float, seen: int) -> str:
        return f"  rot-acc {hits / (4 * seen):.3f}"


@PRETRAINS.register("simclr", label="SimCLR", params=_PRETRAIN_PARAMS, needs_images=True)
class SimCLR:
    """SimCLR: NT-Xent between two views through a 2-layer projection head."""

    def __init__(self, cfg: TrialConfig, backbone: nn.Module, ctx: _Context):
        self.cfg, self.ctx = cfg, ctx
        self.net = nn.Sequential(backbone, _Projector(backbone.feat_dim, CONTRASTIVE["proj_dim"]))

    def optimizer(self, cfg: TrialConfig, steps_per_epoch: int):
        return _contrastive_optimizer(cfg, self.net.parameters(), steps_per_epoch)

    def loss(self, xb: torch.Tensor):
        ctx = self.ctx
        v = torch.cat([_views(ctx.aug, self.cfg, xb, ctx.gen), _views(ctx.aug, self.cfg, xb, ctx.gen)])
        with autocast(ctx.device, ctx.precision):
            z = self.net(v)
        return nt_xent(z[:len(xb)], z[len(xb):], CONTRASTIVE["simclr_temperature"]), None

    summary = None


@PRETRAINS.register("moco", label="MoCo v2", params=_PRETRAIN_PARAMS, needs_images=True)
class MoCo:
    """MoCo v2: InfoNCE against a queue of keys from a momentum encoder (MLP head)."""

    def __init__(self, cfg: TrialConfig, backbone: nn.Module, ctx: _Context):
        self.cfg, self.ctx = cfg, ctx
        self.net = nn.Sequential(backbone, _Projector(backbone.feat_dim, CONTRASTIVE["proj_dim"]))
        self.key_net = copy.deepcopy(self.net)
        for p in self.key_net.parameters():
            p.requires_grad_(False)
        self.queue = MoCoQueue(min(CONTRASTIVE["moco_queue"], ctx.n), CONTRASTIVE["proj_dim"], ctx.device, ctx.gen)

    def optimizer(self, cfg: TrialConfig, steps_per_epoch: int):
        self.key_net.to(self.ctx.device, memory_format=torch.channels_last)
        return _contrastive_optimizer(cfg, self.net.parameters(), steps_per_epoch)

    def loss(self, xb: torch.Tensor):
        ctx = self.ctx
        vq, vk = _views(ctx.aug, self.cfg, xb, ctx.gen), _views(ctx.aug, self.cfg, xb, ctx.gen)
        with autocast(ctx.device, ctx.precision):
            q = self.net(vq)
        with torch.no_grad():
            momentum_update(self.key_net, self.net, CONTRASTIVE["moco_momentum"])
            # single-device stand-in for shuffling BN: keys shuffled, forwarded in sub-batches
            shuffle = torch.from_numpy(ctx.rng.permutation(len(xb))).to(ctx.device)
            with autocast(ctx.device, ctx.precision):
                k = torch.cat([self.key_net(c) for c in vk[shuffle].chunk(CONTRASTIVE["moco_key_splits"])])
            k = F.normalize(k.float(), dim=1)[torch.argsort(shuffle)]
        loss = moco_infonce(q, k, self.queue.keys.clone(), CONTRASTIVE["moco_temperature"])
        self.queue.enqueue(k)
        return loss, None

    summary = None


@PRETRAINS.register("none", label="none (random init)")
class NoPretraining:
    """No pretraining: the backbone starts from its random initialisation."""


def group_recipe(cfg: TrialConfig) -> bool:
    return cfg.pretrain == "rotnet" and cfg.param("pretrain_recipe") == "group"


def pretrain_spec(cfg: TrialConfig, spec: data_mod.DatasetSpec) -> data_mod.DatasetSpec:
    """The spec the pretraining augments with: the group's normalisation under its recipe."""
    if group_recipe(cfg) and cfg.dataset in GROUP_NORMALISATION:
        mean, std = GROUP_NORMALISATION[cfg.dataset]
        return dataclasses.replace(spec, mean=mean, std=std)
    return spec


def _split(cfg: TrialConfig, ds: data_mod.Dataset, env: Env | None, split: str) -> data_mod.Dataset:
    if ds.split == split:
        return ds
    env = env or Env()
    return data_mod.load(cfg.dataset, env.data_root, split, env.download)


def pretrain_backbone(cfg: TrialConfig, ds: data_mod.Dataset, log: Log = print,
                      env: Env | None = None) -> tuple[dict, dict]:
    """Train a backbone with the registered method ``cfg.pretrain``; returns (backbone
    state_dict on CPU, stats). ``ds`` is the trial's data; under RotNet's ``group`` recipe the
    training split is trained on and the test split selects the epoch (loaded from ``env``
    unless ``ds`` is that split)."""
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    configure(device, precision)
    select = None
    if group_recipe(cfg):
        select = _split(cfg, ds, env, "test")
        ds = _split(cfg, ds, env, "train")
    torch.manual_seed(cfg.pretrain_seed)
    rng = np.random.default_rng(cfg.pretrain_seed)
    gen = torch.Generator(device=device).manual_seed(cfg.pretrain_seed)
    backbone = make_backbone(cfg.arch, ds.spec.channels, cfg.width, cfg.shortcut)
    aug = Augmenter(pretrain_spec(cfg, ds.spec), device)
    ctx = _Context(device, precision, aug, gen, rng, len(ds))
    method = PRETRAINS.get(cfg.pretrain).fn(cfg, backbone, ctx)
    net = method.net.to(device, memory_format=torch.channels_last)
    x = torch.from_numpy(ds.x).to(device)
    bs = min(cfg.pretrain_batch_size, len(ds))
    steps = len(ds) // bs
    opt, sched = method.optimizer(cfg, steps)
    per_batch = getattr(method, "step_per_batch", True)
    x_sel = torch.from_numpy(select.x).to(device) if select is not None else None
    best: tuple[float, int, dict] | None = None
    history: list[dict] = []
    t_start = time.perf_counter()
    loss_avg = float("nan")
    for epoch in range(cfg.pretrain_epochs):
        t0 = time.perf_counter()
        if not per_batch:
            with warnings.catch_warnings():   # stepped before the first optimizer step, as the group's code
                warnings.simplefilter("ignore", UserWarning)
                sched.step()
        lr = opt.param_groups[0]["lr"]     # the rate this epoch starts with
        net.train()
        total = torch.zeros((), device=device)
        hits = torch.zeros((), device=device)
        for idx in _batches(len(ds), bs, rng, device):
            loss, h = method.loss(x[idx])
            if h is not None:
                hits += h
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if per_batch:
                sched.step()
            total += loss.detach()
        loss_avg = float(total) / max(steps, 1)
        if not np.isfinite(loss_avg):
            raise RuntimeError(f"{cfg.pretrain} pretraining diverged at epoch {epoch + 1} (loss {loss_avg})")
        extra = method.summary(float(hits), steps * bs) if method.summary else ""
        h = {"epoch": epoch + 1, "loss": loss_avg, "lr": lr}
        if cfg.pretrain == "rotnet":
            h["rot_acc"] = float(hits) / (4 * max(steps * bs, 1))
        if x_sel is not None:
            h["test_rot_acc"] = method.accuracy(x_sel, aug)
            extra += f"  test rot-acc {h['test_rot_acc']:.3f}"
            if best is None or h["test_rot_acc"] > best[0]:   # strictly better, as the group's is_best
                best = (h["test_rot_acc"], epoch + 1,
                        {k: v.detach().cpu().clone() for k, v in backbone.state_dict().items()})
        history.append(h)
        log(f"[pretrain {cfg.pretrain}] epoch {epoch + 1}/{cfg.pretrain_epochs}  loss {loss_avg:.4f}{extra}  "
            f"{time.perf_counter() - t0:.1f} s")
    stats = {"final_loss": loss_avg, "seconds": time.perf_counter() - t_start, "device": str(device),
             "precision": precision, "pretrain_split": ds.split, "n_pretrain": int(len(ds)), "history": history}
    if cfg.pretrain == "rotnet":
        stats["rot_acc"] = history[-1]["rot_acc"] if history else None
        stats["recipe"] = cfg.param("pretrain_recipe")
    if best is not None:
        stats.update(test_rot_acc=best[0], best_epoch=best[1], selected_on="test")
        return best[2], stats
    return {k: v.detach().cpu() for k, v in backbone.state_dict().items()}, stats


def pretrain_data(cfg: TrialConfig, env: Env) -> data_mod.Dataset:
    """The images a backbone of ``cfg`` is pretrained on (the trial's split)."""
    return data_mod.load(cfg.dataset, env.data_root, cfg.split, env.download)


def ensure_backbone(cfg: TrialConfig, env: Env, ds: data_mod.Dataset | None = None, log: Log = print,
                    fingerprint: str | None = None) -> str | None:
    """Path of the cached pretrained backbone of ``cfg``, pretraining it first if missing.
    ``fingerprint`` (of the pretraining data) avoids loading the data when the file exists."""
    if cfg.pretrain == "none":
        return None
    if ds is not None and (ds.split != cfg.split or ds.name != cfg.dataset):
        ds = None
    if fingerprint is None:
        ds = ds or pretrain_data(cfg, env)
        fingerprint = ds.fingerprint
    path = backbone_path(cfg, env.cache_dir, fingerprint)
    if os.path.exists(path) and cached_backbone_ok(path, cfg, fingerprint, log):
        return path
    ds = ds or pretrain_data(cfg, env)
    if ds.fingerprint != fingerprint:
        raise data_mod.DatasetError(f"dataset {cfg.dataset!r} changed while the study ran (fingerprint "
                                    f"{ds.fingerprint}, planned {fingerprint}); run the study again")
    log(f"[pretrain {cfg.pretrain}] no cached backbone at {path}: training one")
    state, stats = pretrain_backbone(cfg, ds, log, env)
    _save_atomic({"state_dict": state, "meta": {**backbone_identity(cfg, fingerprint), **stats}}, path)
    log(f"[pretrain {cfg.pretrain}] saved {path} ({stats['seconds']:.1f} s)")
    return path


def cached_backbone_ok(path: str, cfg: TrialConfig, fingerprint: str | None, log: Log = print) -> bool:
    """Whether the cached backbone at ``path`` loads (weights only) and is ``cfg``'s; if not,
    it is moved aside to ``backbones/quarantine/`` with a warning, so that it is pretrained again."""
    from .models import build_model
    try:
        load_backbone(build_model(cfg).backbone, path, cfg, fingerprint)
        return True
    except CheckpointError as e:
        folder = os.path.join(os.path.dirname(path), "quarantine")
        os.makedirs(folder, exist_ok=True)
        dst = os.path.join(folder, f"{os.path.basename(path)}.{uuid.uuid4().hex[:8]}")
        try:
            os.replace(path, dst)
        except FileNotFoundError:      # another worker moved it already
            return False
        msg = str(e).replace("; delete it to pretrain again", "")
        log(f"warning: {msg}: moved to {dst}; pretraining it again")
        return False


def load_backbone(backbone: nn.Module, path: str, cfg: TrialConfig | None = None,
                  fingerprint: str | None = None) -> dict:
    """Load a cached backbone strictly (``weights_only=True``); returns its metadata."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated file, not a torch file, unsafe pickle ...
        raise CheckpointError(f"backbone checkpoint {path} is unreadable ({load_error_reason(e)})") from None
    if not isinstance(blob, dict) or "state_dict" not in blob:
        raise CheckpointError(f"backbone checkpoint {path}: expected a dict with 'state_dict' and 'meta'")
    meta = blob.get("meta", {})
    if cfg is not None:
        want = backbone_identity(cfg, fingerprint if fingerprint is not None else meta.get("data"))
        diff = sorted(k for k in want if meta.get(k) != want[k])
        if diff:
            raise CheckpointError(f"backbone checkpoint {path} was trained for another setting "
                                  f"({', '.join(f'{k}={meta.get(k)!r} vs {want[k]!r}' for k in diff)})")
    load_strict(backbone, blob["state_dict"], what=f"backbone checkpoint {path}")
    return meta


@torch.no_grad()
def extract_features(backbone: nn.Module, x: torch.Tensor, aug: Augmenter, batch: int = 1024,
                     precision: str = "fp32") -> np.ndarray:
    """Pooled features (N x D, fp32 numpy) of uint8 images on the backbone's device, eval mode."""
    backbone.eval()
    device = x.device
    out = []
    for i in range(0, len(x), batch):
        with autocast(device, precision):
            out.append(backbone(aug.plain(x[i:i + batch])).float().cpu())
    return torch.cat(out).numpy()


def kmeans_baseline(cfg: TrialConfig, env: Env, ds: data_mod.Dataset | None = None, log: Log = print,
                    n_init: int = 10) -> dict:
    """K-means (scikit-learn, C clusters, ``n_init`` restarts, seeded by ``cfg.seed``) on the
    pretrained backbone's pooled features of the evaluated images: ACC, NMI, ARI."""
    from sklearn.cluster import KMeans

    from .metrics import scores
    device = resolve_device(cfg.device)
    configure(device, resolve_precision(cfg.precision, device))
    split = cfg.split if cfg.eval_split == "same" else cfg.eval_split
    if ds is None or ds.split != split:
        ds = data_mod.load(cfg.dataset, env.data_root, split, env.download)
    train_ds = ds if split == cfg.split else None
    path = ensure_backbone(cfg, env, train_ds, log)
    spec = ds.spec
    backbone = make_backbone(cfg.arch, spec.channels if spec.is_image else spec.size, cfg.width, cfg.shortcut)
    if path is not None:
        load_backbone(backbone, path, cfg)
    backbone.to(device)
    x = torch.from_numpy(ds.x).to(device)
    t0 = time.perf_counter()
    feats = extract_features(backbone, x, Augmenter(spec, device), precision=resolve_precision(cfg.precision, device))
    pred = KMeans(n_clusters=ds.num_clusters, n_init=n_init, random_state=cfg.seed).fit_predict(feats)
    res = scores(ds.y, pred)
    res["seconds"] = time.perf_counter() - t0
    res["data"] = ds.provenance()
    log(f"[k-means on {cfg.pretrain} features] acc {res['acc']:.4f}  nmi {res['nmi']:.4f}  ari {res['ari']:.4f}")
    return res

