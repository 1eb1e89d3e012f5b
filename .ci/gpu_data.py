#!/usr/bin/env python3
"""The real data for the GPU check, packed here to travel and unpacked there.

    python3 .ci/gpu_data.py pack ../shared/data .data     # here: CIFAR-10's JPEG archive (copied) + MNIST (xz)
    python3 .ci/gpu_data.py unpack .data                  # there: cifar10_{train,test}.npz, MNIST/raw/*-ubyte

MNIST travels as its raw uint8 arrays compressed with xz (9.1 MB against the .npz files'
11.5 MB), so that it fits beside the Ray/Optuna pack and CIFAR-10 in the 64 MiB that may
travel with one command. Unpacked, it becomes torchvision's own IDX files (the format of the
official files: a big-endian header, then the bytes), which lsdc's ``mnist`` dataset reads.
CIFAR-10 is decoded from the JPEG copy (lossy; see ../shared/data/README.md).
"""
from __future__ import annotations

import hashlib
import io
import lzma
import os
import shutil
import struct
import sys
import tarfile
from concurrent.futures import ProcessPoolExecutor

import numpy as np

MNIST_PARTS = (("train", "mnist_train.npz"), ("t10k", "mnist_test.npz"))   # IDX prefix, .npz
# sha256 of the raw image bytes of the copies in ../shared/data (README there; MNIST's computed
# here from its .npz files): unpack says MATCH or MISMATCH, e.g. for another JPEG decoder
KNOWN_SHA256 = {
    "cifar10 train": "5aaf8a2cf2e577ff4dbb15e4f368840fab5aca1812bcc69682005f8dc661d466",
    "cifar10 test": "5a6aa8185204d80b65d3dfb540696dadd5f10d185ded226a96665d3e0fc6259f",
    "mnist train": "741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757",
    "mnist t10k": "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
}


def _check(name: str, images: np.ndarray) -> str:
    h = hashlib.sha256(images.tobytes()).hexdigest()
    known = KNOWN_SHA256.get(name)
    verdict = "" if known is None else (" MATCH" if h == known else " MISMATCH (not the copy in ../shared/data)")
    return f"{name}: {images.shape}, sha256 of the raw images {h}{verdict}"


def pack(shared: str, dest: str) -> None:
    os.makedirs(dest, exist_ok=True)
    shutil.copyfile(os.path.join(shared, "cifar10_jpeg.tar.gz"), os.path.join(dest, "cifar10_jpeg.tar.gz"))
    with lzma.open(os.path.join(dest, "mnist.u8.xz"), "wb", preset=9 | lzma.PRESET_EXTREME) as f:
        for part, npz in MNIST_PARTS:
            with np.load(os.path.join(shared, npz), allow_pickle=False) as z:
                images, labels = np.ascontiguousarray(z["images"], dtype=np.uint8), z["labels"]
            if images.shape[1:] not in ((28, 28), (28, 28, 1)) or len(labels) != len(images) or \
                    labels.min(initial=0) < 0 or labels.max(initial=0) > 255:
                raise SystemExit(f"{npz}: expected N x 28 x 28 (x 1) uint8 images and N labels in 0-255, got images "
                                 f"{images.shape} and {len(labels)} labels in [{labels.min(initial=0)}, {labels.max(initial=0)}]")
            f.write(struct.pack(">I", len(images)) + images.tobytes() + labels.astype(np.uint8).tobytes())
    for name in sorted(os.listdir(dest)):
        print(f"{dest}/{name}: {os.path.getsize(os.path.join(dest, name)) / 1e6:.1f} MB")


def _decode(blobs: list[bytes]) -> np.ndarray:
    from PIL import Image
    return np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in blobs])


def unpack_cifar10(src: str) -> None:
    """cifar10_train.npz / cifar10_test.npz (lsdc's cifar10 reads them) and cifar10_all.npz (the
    60,000 images in one file, for lsdc.bench)."""
    files, out = {}, {}
    with tarfile.open(os.path.join(src, "cifar10_jpeg.tar.gz")) as tf:
        for m in tf.getmembers():
            if m.isfile():
                files[m.name] = tf.extractfile(m).read()
    for split in ("train", "test"):
        rows = files[f"{split}/labels.csv"].decode().strip().splitlines()[1:]
        labels = np.array([int(r.split(",")[1]) for r in rows], dtype=np.int64)
        blobs = [files[f"{split}/{i:06d}.jpg"] for i in range(len(rows))]
        chunks = [blobs[i:i + 2500] for i in range(0, len(blobs), 2500)]
        with ProcessPoolExecutor(min(16, os.cpu_count() or 1)) as ex:
            images = np.concatenate(list(ex.map(_decode, chunks)))
        np.savez(os.path.join(src, f"cifar10_{split}.npz"), images=images, labels=labels)
        out[split] = (images, labels)
        print(_check(f"cifar10 {split}", images))
    np.savez(os.path.join(src, "cifar10_all.npz"), images=np.concatenate([out["train"][0], out["test"][0]]),
             labels=np.concatenate([out["train"][1], out["test"][1]]))


def _write_idx(path: str, a: np.ndarray) -> None:
    with open(path, "wb") as f:
        f.write(struct.pack(">HBB", 0, 0x08, a.ndim) + struct.pack(f">{a.ndim}I", *a.shape))
        f.write(a.tobytes())


def unpack_mnist(src: str) -> None:
    raw = os.path.join(src, "MNIST", "raw")
    os.makedirs(raw, exist_ok=True)
    path = os.path.join(src, "mnist.u8.xz")
    with lzma.open(path, "rb") as f:
        for part, _ in MNIST_PARTS:
            head = f.read(4)
            n = struct.unpack(">I", head)[0] if len(head) == 4 else 0
            images, labels = f.read(n * 28 * 28), f.read(n)
            if n == 0 or len(images) != n * 28 * 28 or len(labels) != n:
                raise SystemExit(f"{path}: MNIST part {part!r} is truncated or missing; pack it again")
            images = np.frombuffer(images, np.uint8).reshape(n, 28, 28)
            labels = np.frombuffer(labels, np.uint8)
            _write_idx(os.path.join(raw, f"{part}-images-idx3-ubyte"), images)
            _write_idx(os.path.join(raw, f"{part}-labels-idx1-ubyte"), labels)
            print(_check(f"mnist {part}", images))
        if f.read(1):
            raise SystemExit(f"{path}: data after the last MNIST part; pack it again")


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "pack":
        pack(argv[1], argv[2])
    elif len(argv) == 2 and argv[0] == "unpack":
        unpack_cifar10(argv[1])
        unpack_mnist(argv[1])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
