"""Throughput benchmark of the clustering stage (and RotNet pretraining, and evaluation).

    python -m lsdc.bench                                   # GPU if present, CIFAR-10 shape, batch 256
    python -m lsdc.bench --device cpu --small              # the CPU mode (small sizes; the tests run it)
    python -m lsdc.bench --data .data/cifar10_train.npz --json bench.json

In ONE run on ONE device it times:

- ``reference``: the reference code's pipeline: a DataLoader with PIL transforms (RandomCrop +
  flip per view) in 2 worker processes, RICAP on the CPU, fp32, three separate forwards;
- ``eager``: this package's trial step (data resident on the device as uint8, augmentation and
  RICAP on the device, frozen blocks under no_grad, bf16 autocast on CUDA, channels_last),
  three forwards (faithful BatchNorm statistics);
- ``fused``: the same with the three views in one forward (BatchNorm over 3B);
- ``compiled`` / ``compiled-fused``: the same under ``torch.compile`` (compile time reported apart);
- ``rotnet`` / ``rotnet-compiled``: the pretraining step (4 rotations, full network trained);
- ``eval``: prediction over the whole dataset;
- ``ray-N``: N trials at once under Ray with 1/N GPU each (aggregate images/s).

Prints images/s, seconds per epoch, the ratio to the reference pipeline, achieved TFLOP/s
(FLOPs counted by torch's FlopCounterMode on one step) and peak GPU memory; ``--json`` writes them.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
import tempfile
import time
from typing import Any, Callable

import numpy as np
import torch

from .config import Env, make_config
from .runtime import git_commit, hardware, resolve_device, versions

ALL = ("reference", "eager", "fused", "compiled", "compiled-fused", "rotnet", "rotnet-compiled", "eval",
       "ray-1", "ray-2", "ray-4")


def synthetic_npz(n: int, size: int, channels: int, classes: int, path: str, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    np.savez(path, images=rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8),
             labels=rng.integers(0, classes, n))
    return path


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(step: Callable[[], Any], warmup: int, steps: int, device: torch.device) -> float:
    for _ in range(warmup):
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return time.perf_counter() - t0


def _flops(step: Callable[[], Any]) -> float | None:
    try:
        from torch.utils.flop_counter import FlopCounterMode
        with FlopCounterMode(display=False) as fc:
            step()
        return float(fc.get_total_flops())
    except Exception:  # counting is best effort (compiled graphs, exotic ops)
        return None


def _mem_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _mem_peak(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def _measure(step: Callable[[], Any], device: torch.device, warmup: int, steps: int, per_step: int,
             compiled: bool = False, unit: str = "images") -> dict:
    """Time ``steps`` calls of ``step`` after warm-up (the first call of a compiled step timed
    apart as compile time), with FLOPs per step and peak GPU memory."""
    compile_s = None
    if compiled:
        t0 = time.perf_counter()
        step()
        _sync(device)
        compile_s = time.perf_counter() - t0
    _mem_reset(device)
    seconds = _timed(step, warmup, steps, device)
    return {"seconds": seconds, "images": steps * per_step, "steps": steps,
            "flops_per_step": None if compiled else _flops(step), "peak_mem_gb": _mem_peak(device),
            "compile_s": compile_s, "unit": unit}


def trial_config(data: str, batch: int, width: float, device: str, **over):
    return make_config(data, pretrain="none", batch_size=batch, width=width, device=device, epochs=1,
                       scale_schedule=False, **over)


class _RefViews(torch.utils.data.Dataset):
    """The reference code's input: three independently transformed PIL views per image."""

    def __init__(self, x: np.ndarray, spec):
        from torchvision import transforms as T
        self.x = x
        self.tf = T.Compose([T.RandomCrop(x.shape[1], padding=spec.pad)] +
                            ([T.RandomHorizontalFlip()] if spec.flip else []) +
                            [T.ToTensor(), T.Normalize(spec.mean, spec.std)])

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        from PIL import Image
        img = self.x[i]
        img = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
        return self.tf(img), self.tf(img), self.tf(img)


def bench_reference(cfg, env, warmup: int, steps: int, workers: int) -> dict:
    """The reference pipeline around the same model, labels and losses."""
    from . import data as data_mod
    from .labelers import from_config
    from .losses import mse_consistency, pairwise_bce
    from .mixing import mix_target, ricap
    from .models import build_model
    from .runtime import configure, resolve_device
    device = resolve_device(cfg.device)
    configure(device)
    dataset = data_mod.load(cfg.dataset, env.data_root, cfg.split, env.download)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, dataset.num_clusters).to(device)     # fp32, no channels_last: the reference's
    opt = torch.optim.SGD(model.trainable_parameters(), lr=cfg.lr, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay)
    ds = _RefViews(dataset.x, dataset.spec)
    loader = torch.utils.data.DataLoader(ds, batch_size=cfg.batch_size, shuffle=True, drop_last=True,
                                         num_workers=workers, persistent_workers=workers > 0)
    labeler = from_config(cfg)
    rng = np.random.default_rng(0)
    it = iter(loader)

    def step():
        nonlocal it
        try:
            x, xb, xb2 = next(it)
        except StopIteration:
            it = iter(loader)
            x, xb, xb2 = next(it)
        xb, xb2, plan = ricap(xb, xb2, rng, cfg.mix_beta, cfg.ricap_target)
        x, xb, xb2 = (t.to(device) for t in (x, xb, xb2))
        outs = [model.trainable_forward(model.backbone.run_blocks(v, 0, model.freeze_from)) for v in (x, xb, xb2)]
        p, pb, pb2 = (torch.softmax(o[0], 1) for o in outs)
        target = mix_target(labeler(outs[0][1].detach()), plan)
        loss = pairwise_bce(pb, p, target) + 1.0 * mse_consistency(pb, pb2)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return _measure(step, device, warmup, steps, cfg.batch_size)


def bench_trial(cfg, env, warmup: int, steps: int) -> dict:
    """This package's training step (Trial.train_step: gather, augmentation, RICAP, labels, losses)."""
    from .trial import Trial
    trial = Trial.from_config(cfg, env, log=lambda s: None)
    device = trial.device
    g = torch.Generator(device=device).manual_seed(0)

    def step():
        trial.train_step(trial.random_batch(g), 1.0)
    return _measure(step, device, warmup, steps, cfg.batch_size, compiled=cfg.compile)


def bench_rotnet(cfg, env, warmup: int, steps: int, compile: bool) -> dict:
    from . import data as data_mod
    from .augment import Augmenter
    from .models import make_backbone
    from .pretrain import ROTNET, rotnet_loss
    from .runtime import configure, resolve_precision
    device = resolve_device(cfg.device)
    configure(device)
    precision = resolve_precision(cfg.precision, device)
    ds = data_mod.load(cfg.dataset)
    backbone = make_backbone("resnet18", ds.spec.channels, cfg.width, cfg.shortcut)
    net = torch.nn.Sequential(backbone, torch.nn.Linear(backbone.feat_dim, 4)).to(
        device, memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=ROTNET["lr"], momentum=0.9, nesterov=True, weight_decay=5e-4)
    fwd = torch.compile(net) if compile else net
    x = torch.from_numpy(ds.x).to(device)
    aug = Augmenter(ds.spec, device)
    g = torch.Generator(device=device).manual_seed(0)
    bs = cfg.pretrain_batch_size

    def step():
        idx = torch.randint(0, len(x), (bs,), generator=g, device=device)
        loss, _ = rotnet_loss(fwd, aug.standard(x[idx], g), precision)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return _measure(step, device, warmup, steps, 4 * bs, compiled=compile, unit="rotated images")


def bench_eval(cfg, env, repeats: int = 3) -> dict:
    from .trial import Trial
    trial = Trial.from_config(cfg, env, log=lambda s: None)
    trial.predict()
    _sync(trial.device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        trial.predict()
    _sync(trial.device)
    return {"seconds": (time.perf_counter() - t0) / repeats, "images": len(trial.x_eval), "flops_per_step": None,
            "peak_mem_gb": _mem_peak(trial.device)}


def run(args) -> dict:
    device = resolve_device(args.device)
    tmp = tempfile.mkdtemp(prefix="lsdc-bench-")
    env = Env(data_root=tmp, cache_dir=tmp)
    data = args.data or synthetic_npz(args.n, args.size, args.channels, 10, os.path.join(tmp, "synthetic.npz"))
    base = dict(device=str(device))
    cfg = trial_config(data, args.batch_size, args.width, **base)
    n_images = len(np.load(data)["labels"]) if data.endswith(".npz") else None
    results = []

    def add(name: str, r: dict) -> None:
        ips = r["images"] / r["seconds"]
        per_image = 4 if r.get("unit") == "rotated images" else 1
        row = {"variant": name, "images_per_s": ips, "s_per_epoch": per_image * (n_images or 0) / ips if ips else None,
               "peak_mem_gb": r.get("peak_mem_gb"), "compile_s": r.get("compile_s"), "unit": r.get("unit", "images")}
        if r.get("flops_per_step"):
            row["tflops"] = r["flops_per_step"] * r["steps"] / r["seconds"] / 1e12
        if r.get("per_trial_images_per_s"):
            row["per_trial_images_per_s"] = r["per_trial_images_per_s"]
        if name == "eval":
            row = {"variant": name, "seconds": r["seconds"], "images": r["images"], "images_per_s": ips,
                   "peak_mem_gb": r.get("peak_mem_gb"), "unit": "images (inference)"}
        results.append(row)
        print(_fmt_row(row, results), flush=True)

    print(f"lsdc.bench on {device} ({hardware(device).get('gpu') or hardware(device)['cpu']}): "
          f"{n_images} images of {args.size}x{args.size}x{args.channels}, batch {args.batch_size}, "
          f"width {args.width}, {args.steps} timed steps after {args.warmup} warm-up", flush=True)
    try:
        for v in args.variants:
            if v == "reference":
                add(v, bench_reference(cfg.replace(precision="fp32"), env, args.warmup, args.steps, args.workers))
            elif v in ("eager", "fused", "compiled", "compiled-fused"):
                c = cfg.replace(fused_views="fused" in v, compile=v.startswith("compiled"))
                add(v, bench_trial(c, env, args.warmup, args.steps))
            elif v in ("rotnet", "rotnet-compiled"):
                add(v, bench_rotnet(cfg, env, args.warmup, args.steps, compile=v.endswith("compiled")))
            elif v == "eval":
                add(v, bench_eval(cfg, env))
            elif v.startswith("ray-"):
                from .runner.bench import bench_concurrent
                n = int(v.split("-")[1])
                r = bench_concurrent(n, cfg.to_dict(), env.to_dict(), args.warmup, args.steps,
                                     gpus_per_trial=(1.0 / n) if device.type == "cuda" else 0.0,
                                     cpus_per_trial=args.cpus_per_trial)
                add(v, r)
    finally:   # the Ray that the ray-N variants started, even if a variant failed
        if "lsdc.runner.bench" in sys.modules:
            from .runner.bench import close
            close()
    ref = next((r["images_per_s"] for r in results if r["variant"] == "reference"), None)
    for r in results:
        if ref and r["variant"] != "eval" and r["unit"] == "images":
            r["ratio_to_reference"] = r["images_per_s"] / ref
    out = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "device": str(device),
           "hardware": hardware(device), "versions": versions(), "git_commit": git_commit(),
           "settings": {"n_images": n_images, "size": args.size, "channels": args.channels,
                        "batch_size": args.batch_size, "width": args.width, "steps": args.steps,
                        "warmup": args.warmup, "workers": args.workers, "data": args.data or "synthetic"},
           "results": results}
    print("\n" + summary_table(out), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
        print(f"wrote {args.json}")
    return out


def _fmt_row(row: dict, results: list[dict]) -> str:
    if row["variant"] == "eval":
        return f"  {row['variant']:<16} {row['images']} images in {row['seconds']:.3f} s"
    extra = f", {row['tflops']:.1f} TFLOP/s" if row.get("tflops") else ""
    extra += f", peak {row['peak_mem_gb']:.1f} GiB" if row.get("peak_mem_gb") else ""
    extra += f", compile {row['compile_s']:.1f} s" if row.get("compile_s") else ""
    return f"  {row['variant']:<16} {row['images_per_s']:>10,.0f} {row['unit']}/s{extra}"


def summary_table(out: dict) -> str:
    from tabulate import tabulate
    rows = []
    for r in out["results"]:
        rows.append([r["variant"], f"{r['images_per_s']:,.0f}" if r["variant"] != "eval" else f"{r['seconds']:.3f} s",
                     f"{r['s_per_epoch']:.1f}" if r.get("s_per_epoch") else "",
                     f"{r['ratio_to_reference']:.1f}x" if r.get("ratio_to_reference") else "",
                     f"{r['tflops']:.2f}" if r.get("tflops") else "",
                     f"{r['peak_mem_gb']:.2f}" if r.get("peak_mem_gb") else "",
                     f"{r['compile_s']:.0f}" if r.get("compile_s") else ""])
    return tabulate(rows, headers=["variant", "images/s (eval: time)", "s/epoch", "vs reference", "TFLOP/s",
                                   "peak GiB", "compile s"], tablefmt="github")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lsdc.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--data", help=".npz with images/labels (e.g. the decoded CIFAR-10); default: synthetic")
    p.add_argument("--n", type=int, default=60000, help="synthetic images (CIFAR-10 train+test: 60000)")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--width", type=float, default=1.0, help="ResNet-18 width multiplier")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the reference pipeline")
    p.add_argument("--cpus-per-trial", type=float, default=1.0, help="for the ray-N variants")
    p.add_argument("--variants", default=",".join(ALL), help=f"comma-separated, from {', '.join(ALL)}")
    p.add_argument("--small", action="store_true", help="CPU-sized: 2,000 images, width 0.25, batch 64, "
                   "5 steps, no compiled variants")
    p.add_argument("--json", help="write the results as JSON here")
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    given = set(a.split("=")[0] for a in (argv if argv is not None else sys.argv[1:]) if a.startswith("--"))
    if args.small:
        for name, value in (("n", 2000), ("width", 0.25), ("batch_size", 64), ("steps", 5), ("warmup", 2)):
            if "--" + name.replace("_", "-") not in given:
                setattr(args, name, value)
        if "--variants" not in given:
            args.variants = "reference,eager,fused,rotnet,eval,ray-1,ray-2"
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in args.variants if v not in ALL]
    if bad:
        print(f"error: --variants: unknown {bad[0]!r}; allowed: {', '.join(ALL)}", file=sys.stderr)
        return 2
    if args.batch_size < 2 or args.steps < 1 or args.warmup < 0:
        print("error: --batch-size must be >= 2, --steps >= 1, --warmup >= 0", file=sys.stderr)
        return 2
    run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
