"""Throughput benchmark of the clustering stage (and RotNet pretraining, and evaluation).

    python -m lsdc.bench                                   # GPU if present, CIFAR-10 shape, batch 256
    python -m lsdc.bench --device cpu --small              # the CPU mode (small sizes; the tests run it)
    python -m lsdc.bench --data .data/cifar10_train.npz --json bench.json

In ONE run on ONE device it times:

- ``reference``: the reference code's pipeline: a DataLoader with PIL transforms (RandomCrop +
  flip per view) in 2 worker processes, RICAP on the CPU, fp32, three separate forwards;
- ``eager``: this package's trial step (data resident on the device as uint8, augmentation and
  RICAP on the device, frozen blocks under no_grad, channels_last; its precision: see below),
  three forwards (faithful BatchNorm statistics);
- ``fused``: the same with the three views in one forward (BatchNorm over 3B);
- ``compiled`` / ``compiled-fused``: the same under ``torch.compile`` (compile time reported apart);
- ``rotnet`` / ``rotnet-compiled``: the pretraining step (4 rotations, full network trained);
- ``eval``: prediction over the whole dataset;
- ``ray-N``: N trials at once under Ray with 1/N GPU each (aggregate images/s).

A variant may name its numeric precision after a colon (``eager:bf16``, ``compiled:tf32``,
``rotnet:fp32``); without one it runs in ``--precision`` (default fp32, lsdc's default).
``reference`` is always fp32. A variant that fails is recorded with its error and the run goes
on; ``--json`` is rewritten after every variant, so a run stopped by a time limit keeps what
it measured. ``--profile`` adds, per clustering or RotNet variant, a torch.profiler trace of a
few steps: the GPU's busy share of the wall time, the CPU time in synchronisation, and the top
kernels.

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
PRECISIONS = ("fp32", "tf32", "bf16")


def parse_variant(text: str) -> tuple[str, str | None]:
    """``"eager:bf16"`` -> ``("eager", "bf16")``; ``"eager"`` -> ``("eager", None)``; a
    one-line ValueError naming what is allowed otherwise."""
    name, _, prec = text.partition(":")
    if name not in ALL:
        raise ValueError(f"--variants: unknown {name!r}; allowed: {', '.join(ALL)} (optionally :{'|:'.join(PRECISIONS)})")
    if prec and prec not in PRECISIONS:
        raise ValueError(f"--variants: {text!r}: unknown precision {prec!r}; allowed: {', '.join(PRECISIONS)}")
    if prec and name == "reference":
        raise ValueError("--variants: 'reference' is the reference code's fp32 pipeline; it takes no precision")
    return name, prec or None


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


_SYNC_OPS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "aten::_local_scalar_dense",
             "cudaMemcpy")     # cudaMemcpyAsync too (it waits for pageable host memory): an upper bound


def profile_steps(step: Callable[[], Any], device: torch.device, steps: int = 5, top: int = 12) -> dict:
    """A torch.profiler trace of ``steps`` calls of ``step``: wall time per step, the time the
    device was busy with kernels (its share of the wall time; the rest is the CPU launching,
    Python, or waiting), the CPU time spent in synchronising calls, and the ``top`` kernels by
    device time."""
    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    _sync(device)
    with profile(activities=acts) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        _sync(device)
        wall = time.perf_counter() - t0
    from torch.autograd import DeviceType
    events = prof.key_averages()
    # the kernels themselves (device events), not the CPU ops that launched them (those carry
    # their kernels' time too) nor user annotations: each kernel counted once
    kernels = sorted(((e.key, e.self_device_time_total) for e in events
                      if e.device_type == DeviceType.CUDA and not getattr(e, "is_user_annotation", False)),
                     key=lambda kv: -kv[1])
    busy_us = sum(t for _, t in kernels)
    sync_us = sum(e.self_cpu_time_total for e in events if any(e.key.startswith(o) for o in _SYNC_OPS))
    cpu_top = sorted(((e.key, e.self_cpu_time_total) for e in events), key=lambda kv: -kv[1])[:top]
    return {"steps": steps, "wall_ms_per_step": 1e3 * wall / steps,
            "device_busy_ms_per_step": busy_us / 1e3 / steps if device.type == "cuda" else None,
            "device_busy_share": (busy_us / 1e6) / wall if device.type == "cuda" and wall > 0 else None,
            "sync_cpu_ms_per_step": sync_us / 1e3 / steps,
            "top_kernels_ms_per_step": [[k, t / 1e3 / steps] for k, t in kernels[:top] if t > 0],
            "top_cpu_ops_ms_per_step": [[k, t / 1e3 / steps] for k, t in cpu_top]}


PROFILE = {"on": False}      # set by --profile for the run


def _measure(step: Callable[[], Any], device: torch.device, warmup: int, steps: int, per_step: int,
             compiled: bool = False, unit: str = "images") -> dict:
    """Time ``steps`` calls of ``step`` after warm-up (the first call of a compiled step timed
    apart as compile time), with FLOPs per step and peak GPU memory (and a profile with
    ``--profile``)."""
    compile_s = None
    if compiled:
        t0 = time.perf_counter()
        step()
        _sync(device)
        compile_s = time.perf_counter() - t0
    _mem_reset(device)
    seconds = _timed(step, warmup, steps, device)
    peak = _mem_peak(device)
    out = {"seconds": seconds, "images": steps * per_step, "steps": steps,
           "flops_per_step": None if compiled else _flops(step), "peak_mem_gb": peak,
           "compile_s": compile_s, "unit": unit}
    if PROFILE["on"]:
        try:
            out["profile"] = profile_steps(step, device)
        except Exception as e:  # a profile is extra information; its failure costs the row nothing
            out["profile"] = {"error": f"{type(e).__name__}: {e}"}
    return out


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
    configure(device, "fp32")
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
    """The RotNet pretraining step (4 rotations, the whole network trained) in ``cfg.precision``."""
    from . import data as data_mod
    from .augment import Augmenter
    from .models import make_backbone
    from .pretrain import ROTNET, rotnet_loss
    from .runtime import configure, resolve_precision
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    configure(device, precision)
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
    PROFILE["on"] = bool(args.profile)
    results = []
    out = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "device": str(device),
           "hardware": hardware(device), "versions": versions(), "git_commit": git_commit(),
           "settings": {"n_images": n_images, "size": args.size, "channels": args.channels,
                        "batch_size": args.batch_size, "width": args.width, "steps": args.steps,
                        "warmup": args.warmup, "workers": args.workers, "data": args.data or "synthetic",
                        "precision": args.precision, "profile": bool(args.profile),
                        "rotnet_batch_size": args.rotnet_batch_size},
           "results": results}

    def add(label: str, precision: str, r: dict) -> None:
        ips = r["images"] / r["seconds"]
        per_image = 4 if r.get("unit") == "rotated images" else 1
        row = {"variant": label, "precision": precision, "images_per_s": ips,
               "s_per_epoch": per_image * (n_images or 0) / ips if ips else None,
               "peak_mem_gb": r.get("peak_mem_gb"), "compile_s": r.get("compile_s"), "unit": r.get("unit", "images")}
        if r.get("flops_per_step"):
            row["tflops"] = r["flops_per_step"] * r["steps"] / r["seconds"] / 1e12
        if r.get("per_trial_images_per_s"):
            row["per_trial_images_per_s"] = r["per_trial_images_per_s"]
        if label.split(":")[0] == "eval":
            row = {"variant": label, "precision": precision, "seconds": r["seconds"], "images": r["images"],
                   "images_per_s": ips, "peak_mem_gb": r.get("peak_mem_gb"), "unit": "images (inference)"}
        if r.get("profile"):
            row["profile"] = r["profile"]
        results.append(row)
        print(_fmt_row(row, results), flush=True)

    print(f"lsdc.bench on {device} ({hardware(device).get('gpu') or hardware(device)['cpu']}): "
          f"{n_images} images of {args.size}x{args.size}x{args.channels}, batch {args.batch_size}, "
          f"width {args.width}, {args.steps} timed steps after {args.warmup} warm-up", flush=True)
    interrupted, label, prec = False, "(start)", None
    try:
        for label in args.variants:
            v, prec = parse_variant(label)
            prec = "fp32" if v == "reference" else (prec or args.precision)
            c = cfg.replace(precision=prec)
            try:
                if v == "reference":
                    add(label, prec, bench_reference(c, env, args.warmup, args.steps, args.workers))
                elif v in ("eager", "fused", "compiled", "compiled-fused"):
                    c = c.replace(fused_views="fused" in v, compile=v.startswith("compiled"))
                    add(label, prec, bench_trial(c, env, args.warmup, args.steps))
                elif v in ("rotnet", "rotnet-compiled"):
                    add(label, prec, bench_rotnet(c.replace(pretrain_batch_size=args.rotnet_batch_size), env, args.warmup,
                                                  args.steps, compile=v.endswith("compiled")))
                elif v == "eval":
                    add(label, prec, bench_eval(c, env))
                elif v.startswith("ray-"):
                    from .runner.bench import bench_concurrent
                    n = int(v.split("-")[1])
                    r = bench_concurrent(n, c.to_dict(), env.to_dict(), args.warmup, args.steps,
                                         gpus_per_trial=(1.0 / n) if device.type == "cuda" else 0.0,
                                         cpus_per_trial=args.cpus_per_trial)
                    add(label, prec, r)
                if device.type == "cuda":
                    _cuda_usable(device)      # frees the variant's cached memory
            except Exception as e:    # one broken variant must not cost the others' numbers
                import traceback
                err = f"{type(e).__name__}: {e}"
                results.append({"variant": label, "precision": prec, "error": err,
                                "traceback": traceback.format_exc()[-4000:]})
                print(f"  {label:<16} FAILED: {err}", flush=True)
                if device.type == "cuda" and not _cuda_usable(device):
                    results[-1]["error"] += " (the CUDA context is broken: the variants after it were not run)"
                    print("  the CUDA context is broken: the variants after it were not run", flush=True)
                    break
            _finish(out, args.json)
    except KeyboardInterrupt:   # a time limit (timeout -s INT): keep what was measured, say where it stopped
        interrupted = out["interrupted"] = True
        results.append({"variant": label, "precision": prec, "error": "interrupted"})
        print(f"  {label:<16} interrupted; the variants after it were not run", flush=True)
        _finish(out, args.json)
    finally:   # the Ray that the ray-N variants started, even if a variant failed
        try:
            if "lsdc.runner.bench" in sys.modules:
                from .runner.bench import close
                close()
        finally:
            _finish(out, args.json)
    if interrupted:
        print(f"interrupted; wrote {args.json}" if args.json else "interrupted", flush=True)
        return out
    print("\n" + summary_table(out), flush=True)
    if args.json:
        print(f"wrote {args.json}")
    return out


def _cuda_usable(device: torch.device) -> bool:
    """False after a sticky CUDA error (an illegal memory access, say), which breaks the
    process's CUDA context: later numbers from this process would mean nothing."""
    try:
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        return True
    except Exception:
        return False


def _finish(out: dict, path: str | None) -> None:
    """Ratios to the reference, then the JSON (atomically: a killed run leaves the last whole file)."""
    ref = next((r["images_per_s"] for r in out["results"] if r["variant"] == "reference" and "error" not in r), None)
    for r in out["results"]:
        if ref and "error" not in r and r["variant"].split(":")[0] != "eval" and r["unit"] == "images":
            r["ratio_to_reference"] = r["images_per_s"] / ref
    if path:
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            json.dump(out, f, indent=1)
        os.replace(tmp, path)


def _fmt_row(row: dict, results: list[dict]) -> str:
    if row["variant"].split(":")[0] == "eval":
        return f"  {row['variant']:<16} {row['images']} images in {row['seconds']:.3f} s"
    extra = f", {row['tflops']:.1f} TFLOP/s" if row.get("tflops") else ""
    extra += f", peak {row['peak_mem_gb']:.1f} GiB" if row.get("peak_mem_gb") else ""
    extra += f", compile {row['compile_s']:.1f} s" if row.get("compile_s") else ""
    prof = row.get("profile") or {}
    if prof.get("device_busy_share") is not None:
        extra += f", GPU busy {100 * prof['device_busy_share']:.0f}% of the wall time"
    return f"  {row['variant']:<16} {row['images_per_s']:>10,.0f} {row['unit']}/s{extra}"


def summary_table(out: dict) -> str:
    from tabulate import tabulate
    rows = []
    for r in out["results"]:
        if "error" in r:
            rows.append([r["variant"], r.get("precision", ""), "failed: " + r["error"][:60], "", "", "", "", "", ""])
            continue
        busy = (r.get("profile") or {}).get("device_busy_share")
        is_eval = r["variant"].split(":")[0] == "eval"
        rows.append([r["variant"], r.get("precision", ""),
                     f"{r['images_per_s']:,.0f}" if not is_eval else f"{r['seconds']:.3f} s",
                     f"{r['s_per_epoch']:.1f}" if r.get("s_per_epoch") else "",
                     f"{r['ratio_to_reference']:.1f}x" if r.get("ratio_to_reference") else "",
                     f"{r['tflops']:.2f}" if r.get("tflops") else "",
                     f"{r['peak_mem_gb']:.2f}" if r.get("peak_mem_gb") else "",
                     f"{r['compile_s']:.0f}" if r.get("compile_s") else "",
                     f"{100 * busy:.0f}%" if busy is not None else ""])
    return tabulate(rows, headers=["variant", "precision", "images/s (eval: time)", "s/epoch", "vs reference",
                                   "TFLOP/s", "peak GiB", "compile s", "GPU busy"], tablefmt="github")


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
    p.add_argument("--variants", default=",".join(ALL),
                   help=f"comma-separated, from {', '.join(ALL)}; each may name a precision after a colon "
                        f"({', '.join(PRECISIONS)}), e.g. eager:bf16")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS,
                   help="precision of the variants that name none (reference is always fp32)")
    p.add_argument("--profile", action="store_true",
                   help="also profile a few steps of each timed variant (GPU busy share, synchronisation, top kernels)")
    p.add_argument("--rotnet-batch-size", type=int, default=128,
                   help="images per RotNet step (each in 4 rotations; the preset's 128)")
    p.add_argument("--small", action="store_true", help="CPU-sized: 2,000 images, width 0.25, batch 64, RotNet batch 16, "
                   "5 steps, no compiled variants")
    p.add_argument("--json", help="write the results as JSON here")
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    given = set(a.split("=")[0] for a in (argv if argv is not None else sys.argv[1:]) if a.startswith("--"))
    if args.small:
        for name, value in (("n", 2000), ("width", 0.25), ("batch_size", 64), ("steps", 5), ("warmup", 2),
                            ("rotnet_batch_size", 16)):
            if "--" + name.replace("_", "-") not in given:
                setattr(args, name, value)
        if "--variants" not in given:
            args.variants = "reference,eager,fused,rotnet,eval,ray-1,ray-2"
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in args.variants:
        try:
            parse_variant(v)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    if args.batch_size < 2 or args.steps < 1 or args.warmup < 0 or args.rotnet_batch_size < 1:
        print("error: --batch-size must be >= 2, --steps >= 1, --warmup >= 0, --rotnet-batch-size >= 1", file=sys.stderr)
        return 2
    return 130 if run(args).get("interrupted") else 0


if __name__ == "__main__":
    raise SystemExit(main())
