"""One clustering trial from the command line: python -m lsdc [--dataset digits] ...

Pretrains (or reuses) the backbone, runs the clustering stage with a progress line per
epoch, and prints the final metrics (optionally beside k-means on the backbone's features).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from . import data as data_mod
from .config import ConfigError, Env, make_config, parse_override
from .models import CheckpointError
from .registry import LABELERS, RegistryError, load_plugins

DESCRIPTION = ("One clustering trial: pretrains (or reuses) the backbone, runs the clustering stage with a line "
               "per epoch, and prints the final metrics.")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    p = argparse.ArgumentParser(prog="python -m lsdc", description=DESCRIPTION)
    p.add_argument("--version", action="version", version=f"lsdc {__version__}", help="print lsdc's version and exit")
    p.add_argument("--dataset", default="digits", help="registered dataset or a path to an .npz file (default: "
                   f"digits); registered: {', '.join(data_mod.DATASETS)}")
    p.add_argument("--epochs", type=int, help="clustering epochs (default: the preset's; rescales lr steps and "
                   "ramp-up)")
    p.add_argument("--pretrain-epochs", type=int, help="self-supervised pretraining epochs of the backbone "
                   "(default: the preset's; a cached backbone is reused)")
    p.add_argument("--labeler", choices=LABELERS.names(), help="pairwise labeler (default: the dataset's preset)")
    p.add_argument("--batch-size", type=int, help="clustering batch size (default: the preset's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the clustering stage (default: 0)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available, else CPU), cpu, cuda or cuda:N "
                   "(default: auto)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE",
                   help="any TrialConfig field, e.g. --set mixing=none --set lr_steps=[10]")
    p.add_argument("--data-root", help="where datasets live (default: $LSDC_DATA or ./data)")
    p.add_argument("--cache-dir", help="where pretrained backbones are cached (default: $LSDC_CACHE or ~/.cache/lsdc)")
    p.add_argument("--download", action="store_true", help="let torchvision download a missing dataset")
    p.add_argument("--kmeans", action="store_true", help="also run k-means on the pretrained features")
    p.add_argument("--json", metavar="FILE", help="write the config and per-epoch metrics as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        overrides = dict(parse_override(o) for o in args.overrides)
        for flag, name in (("epochs", "epochs"), ("pretrain_epochs", "pretrain_epochs"), ("labeler", "labeler"),
                           ("batch_size", "batch_size"), ("seed", "seed"), ("device", "device")):
            if getattr(args, flag) is not None:
                overrides[name] = getattr(args, flag)
        cfg = make_config(args.dataset, **overrides)
        env_kw = {k: v for k, v in (("data_root", args.data_root), ("cache_dir", args.cache_dir)) if v}
        env = Env(download=args.download, **env_kw)
        from .trial import Trial  # heavy imports after the arguments are known to be valid
        t0 = time.perf_counter()
        trial = Trial.from_config(cfg, env)
        print(f"lsdc trial {trial.key}: {cfg.dataset} ({len(trial.x)} samples, {trial.num_clusters} clusters), "
              f"labeler {cfg.labeler}, mixing {cfg.mixing}, batch {cfg.batch_size}, "
              f"trainable from block #{cfg.freeze_from}, device {trial.device} ({trial.precision})", flush=True)
        for m in trial:
            line = (f"epoch {m['epoch']:>3}/{cfg.epochs}  loss {m['loss']:.4f}  lr {m['lr']:.3g}  "
                    f"w {m['w_cons']:.3f}")
            if "acc" in m:
                line += (f"  acc {m['acc']:.4f}  nmi {m['nmi']:.4f}  ari {m['ari']:.4f}  "
                         f"conf {100 * m['confident_frac']:.0f}% @ {m['confident_acc']:.3f}")
            line += f"  {m['epoch_s']:.2f} s  ({m['images_per_s']:,.0f} img/s)"
            print(line, flush=True)
        final = trial.history[-1]
        status = "DIVERGED" if trial.diverged else "final"
        print(f"{status}: acc {final.get('acc', float('nan')):.4f}  nmi {final.get('nmi', float('nan')):.4f}  "
              f"ari {final.get('ari', float('nan')):.4f}  ({time.perf_counter() - t0:.1f} s in all)")
        km = None
        if args.kmeans:
            from .pretrain import kmeans_baseline
            km = kmeans_baseline(cfg, env, log=print)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"config": cfg.to_dict(), "history": trial.history, "kmeans": km}, f, indent=1)
        return 1 if trial.diverged else 0
    except (ConfigError, data_mod.DatasetError, CheckpointError, RegistryError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
