"""One LSD-C clustering trial: the per-iteration step of method.md, epoch by epoch.

    trial = Trial.from_config(make_config("digits"))
    for metrics in trial:          # one dict per epoch
        print(metrics["loss"], metrics.get("acc"))   # acc: at evaluations (every eval_every epochs, the last)
    state = trial.state_dict()     # checkpoint; Trial.from_config(cfg).load_state_dict(state) resumes

The whole dataset sits on the trial's device as uint8; augmentation, mixing and labels are
computed there. Frozen blocks run under ``no_grad``; fp32 by default (the reference code's
numerics), bf16 autocast or TF32 on request (losses fp32).

Diagnostics (labels for analysis only; they draw nothing from the training streams and leave
BatchNorm's statistics as they were): at the start, the backbone's k-means ACC and the
labeler's pair precision / recall on a fixed sample (:meth:`Trial.backbone_diagnostics`); with
every evaluation (every ``eval_every`` epochs and the last), the labeler's pair precision /
recall and fraction of positive pairs on that sample, their agreement with fp32's pairs when
the trial runs in another precision, the number of non-empty clusters and the entropy of their
sizes.
"""
from __future__ import annotations

import json
import math
import time
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from . import data as data_mod
from . import labelers, mixing
from .augment import Augmenter
from .config import ConfigError, Env, TrialConfig
from .losses import mse_consistency, pairwise_bce, sigmoid_rampup
from .metrics import (CONFIDENCE, cluster_acc, cluster_size_stats, confusion, evaluate, label_free_scores,
                      match_clusters, pair_agreement, pair_scores)
from .mixing import mix_target
from .models import CheckpointError, build_model, load_error_reason
from .pretrain import ensure_backbone, load_backbone
from .runtime import autocast, configure, exact_fp32, resolve_device, resolve_precision

Log = Callable[[str], None]
FINITE_CHECK_EVERY = 16   # steps between (synchronising) checks of the loss for NaN / inf
DIAG_SAMPLE = 1024        # images of the fixed diagnostic sample (at least one batch)
DIAG_SEED = 20_201_127    # its draw (numpy, its own generator: never a training stream)
DIAG_KMEANS_INIT = 2      # k-means restarts of the backbone diagnostic
# what every epoch's diagnostics hold (pair_flip_frac / pos_agreement: only off fp32)
DIAG_KEYS = ("pair_precision", "pair_recall", "pos_frac", "pair_flip_frac", "pos_agreement",
             "nonempty_clusters", "size_entropy")


class Trial:
    """A clustering trial of ``cfg`` on in-memory data; iterate it for per-epoch metrics.

    ``Trial(cfg, x, y, model)`` takes already-loaded samples (uint8 N x H x W x C images or
    float N x D vectors, numpy or torch), their labels (evaluation only) and a
    :class:`~lsdc.models.ClusterNet` (its backbone already pretrained, or not): one step and
    one epoch can run on synthetic tensors with no files. :meth:`from_config` loads the
    dataset and the pretrained backbone named by a config and an :class:`~lsdc.config.Env`.
    """

    def __init__(self, cfg: TrialConfig, x, y, model: torch.nn.Module, *, spec: data_mod.DatasetSpec | None = None,
                 x_eval=None, y_eval=None, num_clusters: int | None = None, log: Log = print,
                 data: dict[str, Any] | None = None, backbone_path: str | None = None,
                 backbone_meta: dict | None = None):
        self.device = resolve_device(cfg.device)
        self.precision = resolve_precision(cfg.precision, self.device)
        configure(self.device, self.precision)
        self.cfg = cfg if cfg.precision == self.precision else cfg.replace(precision=self.precision)
        self.log = log
        self.spec = spec or cfg.spec
        n = len(x)
        if cfg.batch_size > n:
            raise ConfigError(f"batch_size: must be <= the number of training samples ({n}), got {cfg.batch_size}")
        self.x = torch.as_tensor(x).to(self.device)
        self.x_eval = self.x if x_eval is None else torch.as_tensor(x_eval).to(self.device)
        self.y_eval = np.asarray(y if y_eval is None else y_eval)
        self.num_clusters = num_clusters or self.spec.num_clusters
        self.data = data or {"fingerprint": data_mod.array_fingerprint(np.asarray(self.x.cpu()), np.asarray(y)),
                             "source": "in-memory arrays", "lossy": False, "n": n}
        self.key = self.cfg.key(self.data["fingerprint"])
        self.backbone_path = backbone_path
        self.backbone_meta = dict(backbone_meta or {})
        self.y_train = np.asarray(y)
        self.aug = Augmenter(self.spec, self.device)
        self.model = model
        fmt = torch.channels_last if self.spec.is_image else torch.contiguous_format
        self.model.to(self.device, memory_format=fmt)
        params = self.model.trainable_parameters()
        if cfg.optimizer == "sgd":
            self.opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        else:
            self.opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.sched = torch.optim.lr_scheduler.MultiStepLR(self.opt, list(cfg.lr_steps), cfg.lr_gamma)
        self.labeler = labelers.from_config(cfg)
        self.mix = mixing.from_config(cfg)
        self.gen = torch.Generator(device=self.device).manual_seed(cfg.seed)
        # evaluation draws its augmentations from its own stream: evaluating never changes training
        self.eval_gen = torch.Generator(device=self.device).manual_seed(cfg.seed + 1_000_003)
        self.rng = np.random.default_rng(cfg.seed)
        self.forward = torch.compile(self.model) if cfg.compile else self.model
        self.epoch = 0
        self.history: list[dict[str, Any]] = []
        self.diverged = False
        self.last_eval: dict[str, Any] = {}
        m = min(n, max(DIAG_SAMPLE, cfg.batch_size))
        idx = np.sort(np.random.default_rng(DIAG_SEED).choice(n, m, replace=False))
        self.diag_idx = torch.from_numpy(idx).to(self.device)
        self.diag_y = self.y_train[idx]
        self.backbone_meta["diagnostics"] = self.backbone_diagnostics()

    @classmethod
    def from_config(cls, cfg: TrialConfig, env: Env | None = None, dataset: data_mod.Dataset | None = None,
                    log: Log = print) -> "Trial":
        """Load the dataset (unless given), pretrain or reuse the backbone, build the model."""
        env = env or Env()
        if dataset is None or dataset.split != cfg.split or dataset.name != cfg.dataset:
            dataset = data_mod.load(cfg.dataset, env.data_root, cfg.split, env.download)
        if cfg.batch_size > len(dataset):
            raise ConfigError(f"batch_size: must be <= the number of training samples ({len(dataset)}), "
                              f"got {cfg.batch_size}")
        eval_split = cfg.split if cfg.eval_split == "same" else cfg.eval_split
        eval_ds = dataset if eval_split == cfg.split else data_mod.load(
            cfg.dataset, env.data_root, eval_split, env.download)
        backbone_path = ensure_backbone(cfg, env, dataset, log)
        torch.manual_seed(cfg.seed)
        model = build_model(cfg, dataset.num_clusters)
        meta = load_backbone(model.backbone, backbone_path, cfg, dataset.fingerprint) if backbone_path else {}
        data = dataset.provenance()
        if eval_ds is not dataset:
            data["eval"] = eval_ds.provenance()
        return cls(cfg, dataset.x, dataset.y, model, spec=dataset.spec,
                   x_eval=None if eval_ds is dataset else eval_ds.x, y_eval=None if eval_ds is dataset else eval_ds.y,
                   num_clusters=dataset.num_clusters, log=log, data=data, backbone_path=backbone_path,
                   backbone_meta=meta)

    def random_batch(self, gen: torch.Generator) -> torch.Tensor:
        """``batch_size`` raw samples drawn uniformly with ``gen`` (benchmarks)."""
        idx = torch.randint(0, len(self.x), (self.cfg.batch_size,), generator=gen, device=self.device)
        return self.x[idx]

    # ------------------------------------------------------------------ training
    def _forward_views(self, views: list[torch.Tensor], grads: list[bool]):
        """Logits and pooled features of each view: one forward per view (BatchNorm statistics
        per view, as the reference code), or one forward of the concatenation (fused_views)."""
        with autocast(self.device, self.precision):
            if self.cfg.fused_views:
                logits, feats = self.forward(torch.cat(views))
                return list(logits.chunk(len(views))), list(feats.chunk(len(views)))
            outs = []
            for v, g in zip(views, grads):
                with torch.set_grad_enabled(g):
                    outs.append(self.forward(v))
            return [o[0] for o in outs], [o[1] for o in outs]

    def train_step(self, xb: torch.Tensor, w_cons: float) -> torch.Tensor:
        """One SGD step on a batch of raw samples; returns detached [loss, bce, mse]."""
        cfg = self.cfg
        x = self.aug.standard(xb, self.gen)
        x_bar = self.aug.standard(xb, self.gen)
        x_bar2 = self.aug.standard(xb, self.gen)
        x_bar, x_bar2, plan = self.mix(x_bar, x_bar2, self.rng)
        logits, feats = self._forward_views([x, x_bar, x_bar2], [True, True, cfg.use_mse])
        p, p_bar, p_bar2 = (F.softmax(z.float(), dim=1) for z in logits)
        with torch.no_grad():
            target = mix_target(self.labeler(feats[0].detach().float()), plan)
        bce = pairwise_bce(p_bar, p, target)
        mse = mse_consistency(p_bar, p_bar2)
        loss = bce + w_cons * mse if cfg.use_mse else bce
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return torch.stack([loss.detach(), bce.detach(), mse.detach()])

    def run_epoch(self) -> dict[str, Any]:
        """Train one epoch (drop_last batches), evaluate and compute the diagnostics (every
        ``eval_every`` epochs and at the last), and return the epoch's metrics."""
        cfg = self.cfg
        t0 = time.perf_counter()
        self.model.train()
        w_cons = cfg.lam * sigmoid_rampup(self.epoch, cfg.rampup) if cfg.use_mse else 0.0
        lr = self.opt.param_groups[0]["lr"]
        n, bs = len(self.x), cfg.batch_size
        steps = n // bs
        perm = torch.from_numpy(self.rng.permutation(n)).to(self.device)
        sums = torch.zeros(3, device=self.device)
        finite = True
        for s in range(steps):
            sums += self.train_step(self.x[perm[s * bs:(s + 1) * bs]], w_cons)
            if (s + 1) % FINITE_CHECK_EVERY == 0 and not bool(torch.isfinite(sums).all()):
                finite = False
                break
        means = (sums / max(steps, 1)).tolist()
        finite = finite and all(math.isfinite(v) for v in means)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        train_s = time.perf_counter() - t0
        self.sched.step()
        self.epoch += 1
        m: dict[str, Any] = {"epoch": self.epoch, "loss": means[0], "bce": means[1], "mse": means[2],
                             "w_cons": w_cons, "lr": lr, "train_s": train_s,
                             "images_per_s": steps * bs / train_s if train_s > 0 else float("nan")}
        if not finite:
            self.diverged = True
            m["diverged"] = True
            self.log(f"epoch {self.epoch}/{cfg.epochs}: loss is not finite ({means[0]}): trial diverged")
        else:
            if self.epoch % cfg.eval_every == 0 or self.epoch == cfg.epochs:
                m.update(self.evaluate())
                m.update(self.pair_diagnostics())     # with the evaluation: they cost a forward pass
        m["epoch_s"] = time.perf_counter() - t0
        self.history.append(m)
        return m

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while self.epoch < self.cfg.epochs and not self.diverged:
            yield self.run_epoch()

    @property
    def done(self) -> bool:
        return self.diverged or self.epoch >= self.cfg.epochs

    # ---------------------------------------------------------------- evaluation
    @torch.no_grad()
    def predict(self, batch: int | None = None, augment: bool = False) -> np.ndarray:
        """Softmax probabilities (N x C) of the evaluated samples in eval mode, without
        augmentation (or with the standard one, drawn from the evaluation stream)."""
        batch = batch or (8192 if self.device.type == "cuda" else 1024)
        self.model.eval()
        out = []
        for i in range(0, len(self.x_eval), batch):
            xb = self.x_eval[i:i + batch]
            x = self.aug.standard(xb, self.eval_gen) if augment else self.aug.plain(xb)
            with autocast(self.device, self.precision):
                logits, _ = self.model(x)
            out.append(F.softmax(logits.float(), dim=1))
        self.model.train()
        return torch.cat(out).cpu().numpy()

    def evaluate(self) -> dict[str, Any]:
        """ACC / NMI / ARI / confident samples (labels), and the label-free criterion."""
        t0 = time.perf_counter()
        probs = self.predict()
        res = evaluate(self.y_eval, probs)
        res.update(label_free_scores(probs.argmax(1), self.predict(augment=True).argmax(1), self.num_clusters))
        res.update(cluster_size_stats(probs.argmax(1), self.num_clusters))
        res["eval_s"] = time.perf_counter() - t0
        self.last_eval = {"probs": probs}
        return res

    # --------------------------------------------------------------- diagnostics
    @torch.no_grad()
    def _diag_features(self, fp32: bool = False) -> list[torch.Tensor]:
        """Pooled features of the fixed sample, in chunks of ``batch_size`` (pairs are formed
        within a batch), as the step computes them: the model in training mode (BatchNorm on
        the chunk's statistics), in the trial's precision (or in exact fp32), on the plain
        images (no augmentation: nothing drawn from any stream). BatchNorm's running
        statistics are restored afterwards, so training and evaluation are unchanged."""
        buffers = {k: v.clone() for k, v in self.model.named_buffers()}
        self.model.train()
        bs = self.cfg.batch_size
        out = []
        try:
            for s in range(len(self.diag_idx) // bs):
                x = self.aug.plain(self.x[self.diag_idx[s * bs:(s + 1) * bs]])
                if fp32:
                    with exact_fp32():
                        _, f = self.model(x)
                else:
                    with autocast(self.device, self.precision):
                        _, f = self.model(x)
                out.append(f.float())
        finally:
            for k, v in self.model.named_buffers():
                v.copy_(buffers[k])
        return out

    def _pairs(self, feats: list[torch.Tensor]) -> list[np.ndarray]:
        return [self.labeler(f).cpu().numpy() for f in feats]

    def pair_diagnostics(self) -> dict[str, Any]:
        """The labeler's positive pairs on the fixed sample against the true classes
        (precision, recall, fraction of positive pairs) and, off fp32, their agreement with
        the pairs the same model gives in fp32 (fraction of pairs that differ, Jaccard index
        of the positive pairs)."""
        t0 = time.perf_counter()
        pairs = self._pairs(self._diag_features())
        bs = self.cfg.batch_size
        ys = [self.diag_y[s * bs:(s + 1) * bs] for s in range(len(pairs))]
        out: dict[str, Any] = pair_scores(list(zip(pairs, ys)))
        if self.precision != "fp32":
            out.update(pair_agreement(list(zip(pairs, self._pairs(self._diag_features(fp32=True))))))
        else:
            out.update(pair_flip_frac=0.0, pos_agreement=1.0)
        out["diag_s"] = time.perf_counter() - t0
        return out

    @torch.no_grad()
    def backbone_diagnostics(self) -> dict[str, Any]:
        """The starting point, before any clustering step: k-means ACC (scikit-learn,
        ``DIAG_KMEANS_INIT`` restarts, fixed seed) on the pooled features of the fixed sample
        (eval mode, plain images), and the labeler's pair precision / recall there."""
        from sklearn.cluster import KMeans
        t0 = time.perf_counter()
        self.model.eval()
        feats = []
        for i in range(0, len(self.diag_idx), 1024):
            with autocast(self.device, self.precision):
                _, f = self.model(self.aug.plain(self.x[self.diag_idx[i:i + 1024]]))
            feats.append(f.float().cpu())
        self.model.train()
        f = torch.cat(feats).numpy().astype(np.float64)
        pred = KMeans(n_clusters=self.num_clusters, n_init=DIAG_KMEANS_INIT, random_state=0).fit_predict(f)
        out = {"kmeans_acc": cluster_acc(self.diag_y, pred), "sample": int(len(self.diag_idx))}
        out.update({k: v for k, v in self.pair_diagnostics().items() if k in ("pair_precision", "pair_recall",
                                                                                "pos_frac")})
        out["seconds"] = time.perf_counter() - t0
        return out

    def confusions(self) -> dict[str, list[list[int]]]:
        """Confusion matrices (true class x matched cluster) of the last evaluation: all
        samples, and samples with max probability > 0.9 (Figure 1)."""
        probs = self.last_eval.get("probs")
        if probs is None:
            probs = self.predict()
        pred = probs.argmax(1)
        mapping = match_clusters(self.y_eval, pred, self.num_clusters)
        conf = probs.max(1) > CONFIDENCE
        c = self.num_clusters
        return {"all": confusion(self.y_eval, pred, c, mapping).tolist(),
                "confident": confusion(self.y_eval[conf], pred[conf], c, mapping).tolist()}

    # ------------------------------------------------------------- checkpointing
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue this trial exactly; loadable with weights_only=True."""
        return {"config_key": self.key, "epoch": self.epoch, "diverged": self.diverged,
                "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(), "gen": self.gen.get_state(),
                "eval_gen": self.eval_gen.get_state(),
                "rng": json.dumps(self.rng.bit_generator.state),
                "history": json.dumps(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("config_key") != self.key:
            raise CheckpointError(f"trial checkpoint is for trial {state.get('config_key')}, "
                                  f"not this trial's {self.key}")
        self.model.load_state_dict(state["model"], strict=True)
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.gen.set_state(state["gen"])
        self.eval_gen.set_state(state["eval_gen"])
        self.rng.bit_generator.state = json.loads(state["rng"])
        self.history = json.loads(state["history"])
        self.epoch = int(state["epoch"])
        self.diverged = bool(state["diverged"])

    def save(self, path: str) -> None:
        torch.save(self.state_dict(), path)

    def load(self, path: str) -> None:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(f"trial checkpoint {path} is unreadable ({load_error_reason(e)})") from None
        self.load_state_dict(state)


def run_trial(cfg: TrialConfig, env: Env | None = None, dataset: data_mod.Dataset | None = None,
              log: Log = print) -> Iterator[dict[str, Any]]:
    """Per-epoch metrics of a fresh trial of ``cfg``."""
    yield from Trial.from_config(cfg, env, dataset, log)
