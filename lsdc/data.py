"""Datasets: a registry of name -> spec + loader.

Every dataset loads fully into memory as one :class:`Dataset`:

- image datasets: ``x`` uint8, N x H x W x C (HWC, as the files store them);
- vector datasets: ``x`` float32, N x D;
- ``y`` int64 labels (used only for evaluation), ``num_clusters`` C.

Named datasets come through torchvision from a data root (``download=True`` fetches them);
``digits`` is scikit-learn's bundled 8x8 digits (no file, the embedded default), and any
path ending in ``.npz`` with ``images`` (or ``x``) and ``labels`` (or ``y``) arrays is a
user dataset. ``split`` is ``"all"`` (train + test, what the reference code trains and
evaluates on), ``"train"`` or ``"test"``.
"""
from __future__ import annotations

import functools
import hashlib
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

SPLITS = ("all", "train", "test")

# CIFAR-100 superclass ("coarse label") of each of the 100 fine labels, in fine-label order.
CIFAR100_COARSE = (
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11,
    6, 11, 5, 10, 7, 6, 13, 15, 3, 15, 0, 11, 1, 10, 12, 14, 16, 9, 11, 5,
    5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
    10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13,
    16, 19, 2, 4, 6, 19, 5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13,
)

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
CIFAR100_20_CLASSES = (
    "aquatic mammals", "fish", "flowers", "food containers", "fruit and vegetables",
    "household electrical devices", "household furniture", "insects", "large carnivores",
    "large man-made outdoor things", "large natural outdoor scenes",
    "large omnivores and herbivores", "medium-sized mammals", "non-insect invertebrates",
    "people", "reptiles", "small mammals", "trees", "vehicles 1", "vehicles 2")
STL10_CLASSES = ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")
REUTERS_CLASSES = ("CCAT", "GCAT", "MCAT", "ECAT")
DIGIT_CLASSES = tuple(str(i) for i in range(10))


class DatasetError(ValueError):
    """A dataset that cannot be found or read; the message names the files and the flag."""


@dataclass(frozen=True)
class Dataset:
    name: str
    x: np.ndarray
    y: np.ndarray
    num_clusters: int
    spec: "DatasetSpec"
    split: str = "all"
    source: str = ""        # where the arrays came from (torchvision's files, a decoded JPEG copy, a .npz)
    lossy: bool = False     # True for copies that lost information (CIFAR-10 from JPEG)

    def __len__(self) -> int:
        return len(self.y)

    @functools.cached_property
    def fingerprint(self) -> str:
        """A hash of the arrays actually used (images and labels, with shapes and dtypes)."""
        return array_fingerprint(self.x, self.y)

    def provenance(self) -> dict:
        """What a record says about the data: fingerprint, source, lossy, size and shape."""
        return {"fingerprint": self.fingerprint, "source": self.source, "lossy": self.lossy, "split": self.split,
                "n": int(len(self)), "shape": list(self.x.shape[1:])}


def array_fingerprint(x: np.ndarray, y: np.ndarray) -> str:
    """sha256 (16 hex digits) of the image / vector array and the label array, shapes and dtypes included."""
    h = hashlib.sha256()
    for a in (np.ascontiguousarray(x), np.ascontiguousarray(y)):
        h.update(f"{a.dtype.str}{a.shape};".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class DatasetSpec:
    """What a trial needs to know about a dataset before loading it."""
    name: str
    kind: str                      # "image" | "vector"
    num_clusters: int
    channels: int = 0              # images only
    size: int = 0                  # images: height (= width); vectors: dimension
    mean: tuple[float, ...] = ()   # per-channel normalisation of images in [0, 1]
    std: tuple[float, ...] = ()
    pad: int = 0                   # random-crop padding of the standard augmentation
    flip: bool = False             # horizontal flips in the standard augmentation
    splits: tuple[str, ...] = SPLITS
    classes: tuple[str, ...] = ()
    files: tuple[str, ...] = ()    # what the loader expects under the data root
    loader: Callable[..., tuple[np.ndarray, np.ndarray]] | None = field(default=None, repr=False)
    # core config values of the dataset's preset (supplement Table 1's row); the labelers',
    # mixings' and pretraining methods' own values live with them in lsdc.registry
    preset: dict = field(default_factory=dict, repr=False, compare=False, hash=False)
    source: str = ""               # where the data comes from (recorded with every result)

    @property
    def is_image(self) -> bool:
        return self.kind == "image"


# ----------------------------------------------------------------------------- loaders

def _require(root: str, files: tuple[str, ...], download: bool, name: str) -> None:
    """Fail with one line naming the expected files and the download flag."""
    if download:
        return
    missing = [f for f in files if not os.path.exists(os.path.join(root, f))]
    if missing:
        raise DatasetError(
            f"dataset {name!r}: not found under data root {root!r} (missing {', '.join(missing)}); "
            f"pass --download (download=True) to fetch it with torchvision, or point --data-root at a copy")


def _load_digits(root: str, split: str, download: bool):
    from sklearn.datasets import load_digits
    d = load_digits()
    x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return x, d.target.astype(np.int64)


def _both(split: str, load_one: Callable[[bool], tuple[np.ndarray, np.ndarray]]):
    """Load the train and/or test part and concatenate them for split 'all'."""
    parts = [load_one(s == "train") for s in (("train", "test") if split == "all" else (split,))]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _load_mnist(root: str, split: str, download: bool):
    from torchvision.datasets import MNIST

    def one(train: bool):
        ds = MNIST(root, train=train, download=download)
        return ds.data.numpy()[..., None].astype(np.uint8), ds.targets.numpy().astype(np.int64)
    return _both(split, one)


_CIFAR10_NPZ = ("cifar10_train.npz", "cifar10_test.npz")


def _load_cifar10(root: str, split: str, download: bool):
    from torchvision.datasets import CIFAR10

    def one(train: bool):
        npz = os.path.join(root, _CIFAR10_NPZ[0 if train else 1])
        if not os.path.exists(os.path.join(root, _CIFAR10_FILES[0])) and os.path.exists(npz):
            # decoded copies (../shared/tools/cifar10-jpeg-to-npz): images N x 32 x 32 x 3, labels
            with np.load(npz, allow_pickle=False) as z:
                return np.ascontiguousarray(z["images"]), z["labels"].astype(np.int64)
        ds = CIFAR10(root, train=train, download=download)
        return np.ascontiguousarray(ds.data), np.asarray(ds.targets, dtype=np.int64)
    return _both(split, one)


def _load_cifar100_20(root: str, split: str, download: bool):
    from torchvision.datasets import CIFAR100
    coarse = np.asarray(CIFAR100_COARSE, dtype=np.int64)

    def one(train: bool):
        ds = CIFAR100(root, train=train, download=download)
        return np.ascontiguousarray(ds.data), coarse[np.asarray(ds.targets, dtype=np.int64)]
    return _both(split, one)


def _load_stl10(root: str, split: str, download: bool):
    from torchvision.datasets import STL10

    def one(train: bool):
        ds = STL10(root, split="train" if train else "test", download=download)
        return np.ascontiguousarray(ds.data.transpose(0, 2, 3, 1)), np.asarray(ds.labels, dtype=np.int64)
    return _both(split, one)


def _read_npy_header(f) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    return np.lib.format.read_array_header_2_0(f)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: never runs code from the file."""
    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar"), ("builtins", "dict"), ("builtins", "list")}

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")


def _read_dec_npy(path: str) -> dict:
    """DEC's ``reutersidf10k.npy``: ``np.save`` of a dict {'data', 'label'} (a pickled 0-d array)."""
    with open(path, "rb") as f:
        shape, _, dtype = _read_npy_header(f)
        if dtype.hasobject:
            try:
                obj = _NumpyOnlyUnpickler(f).load()
            except (pickle.UnpicklingError, EOFError, ValueError) as e:
                raise DatasetError(f"{path}: not a DEC data file ({e})") from None
            obj = obj.item() if isinstance(obj, np.ndarray) else obj
        else:
            raise DatasetError(f"{path}: expected DEC's pickled dict with 'data' and 'label'")
    if not isinstance(obj, dict) or "data" not in obj or "label" not in obj:
        raise DatasetError(f"{path}: expected a dict with keys 'data' and 'label'")
    return obj


def _load_reuters10k(root: str, split: str, download: bool):
    npz = os.path.join(root, "reutersidf10k.npz")
    if os.path.exists(npz):
        with np.load(npz, allow_pickle=False) as z:
            obj = {"data": z["data"], "label": z["label"]}
    else:
        obj = _read_dec_npy(os.path.join(root, "reutersidf10k.npy"))
    x = np.asarray(obj["data"], dtype=np.float32)
    y = np.asarray(obj["label"], dtype=np.int64).reshape(-1)
    if x.ndim != 2 or len(x) != len(y):
        raise DatasetError(f"reuters10k: 'data' must be N x D and 'label' N long, got {x.shape} and {y.shape}")
    return x, y


def _npz_arrays(path: str) -> tuple[str, str]:
    with np.load(path, allow_pickle=False) as z:
        keys = set(z.files)
    xk = "images" if "images" in keys else "x" if "x" in keys else None
    yk = "labels" if "labels" in keys else "y" if "y" in keys else None
    if xk is None or yk is None:
        raise DatasetError(f"{path}: an .npz dataset needs arrays 'images' (or 'x') and 'labels' (or 'y'); "
                           f"found {sorted(keys)}")
    return xk, yk


def _checked_labels(path: str, yk: str, y: np.ndarray, n_images: int) -> np.ndarray:
    """A user file's labels as int64, refused unless they are finite integers of at least 2
    classes, one per image."""
    y = np.asarray(y).reshape(-1)
    if y.dtype.kind == "f":
        if not np.isfinite(y).all():
            raise DatasetError(f"dataset {path!r}: labels {yk!r} hold NaN or inf; labels must be integers")
        if not (y == np.round(y)).all():
            raise DatasetError(f"dataset {path!r}: labels {yk!r} are not integers")
    elif y.dtype.kind not in "iub":
        raise DatasetError(f"dataset {path!r}: labels {yk!r} must be integers, got {y.dtype}")
    if len(y) != n_images:
        raise DatasetError(f"dataset {path!r}: {n_images} images but {len(y)} labels; they must be of equal length")
    if len(np.unique(y)) < 2:
        raise DatasetError(f"dataset {path!r}: the labels hold {len(np.unique(y))} class(es); clustering needs "
                           f"at least 2")
    return y.astype(np.int64)


def _npz_header(path: str, key: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of one array of an .npz without reading its data."""
    with zipfile.ZipFile(path) as zf, zf.open(key + ".npy") as f:
        shape, _, dtype = _read_npy_header(f)
    return shape, dtype


def npz_spec(path: str) -> DatasetSpec:
    """The spec of a user's .npz dataset: shapes from the array headers, the number of
    clusters from the labels, per-channel mean/std of the images (computed once per file
    version and cached).

    Images are uint8 N x H x W (x C); anything else 2-D is vectors.
    """
    if not os.path.isfile(path):
        raise DatasetError(f"dataset {path!r}: no such .npz file")
    st = os.stat(path)
    return _npz_spec_cached(os.path.abspath(path), st.st_mtime_ns, st.st_size, path)


@functools.lru_cache(maxsize=32)
def _npz_spec_cached(abspath: str, mtime_ns: int, size: int, path: str) -> DatasetSpec:
    xk, yk = _npz_arrays(path)
    shape, dtype = _npz_header(path, xk)
    with np.load(path, allow_pickle=False) as z:
        labels = _checked_labels(path, yk, z[yk], int(shape[0]) if shape else -1)
    ncl = int(len(np.unique(labels)))
    if len(shape) in (3, 4) and dtype == np.uint8:
        ch = 1 if len(shape) == 3 else int(shape[3])
        if shape[1] != shape[2] or ch not in (1, 3):
            raise DatasetError(f"{path}: images must be square with 1 or 3 channels, got shape {shape}")
        stats = _npz_stats(path, xk, ch)
        return DatasetSpec(name=path, kind="image", num_clusters=ncl, channels=ch, size=int(shape[1]),
                           mean=stats[0], std=stats[1], pad=max(1, int(shape[1]) // 8),
                           flip=ch == 3, splits=("all",), loader=None)
    if len(shape) == 2:
        return DatasetSpec(name=path, kind="vector", num_clusters=ncl, size=int(shape[1]),
                           splits=("all",), loader=None)
    raise DatasetError(f"{path}: 'images' must be uint8 N x H x W (x C) or a 2-D float array, "
                       f"got {dtype} {shape}")


def _npz_stats(path: str, key: str, ch: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    with np.load(path, allow_pickle=False) as z:
        x = z[key].reshape(-1, ch).astype(np.float64) / 255.0
    return tuple(float(v) for v in x.mean(0)), tuple(float(max(v, 1e-3)) for v in x.std(0))


def _load_npz(path: str) -> tuple[np.ndarray, np.ndarray]:
    xk, yk = _npz_arrays(path)
    with np.load(path, allow_pickle=False) as z:
        x, y = z[xk], z[yk].reshape(-1)
    y = _checked_labels(path, yk, y, len(x))
    if x.ndim == 3:
        x = x[..., None]
    if x.dtype != np.uint8:
        x = x.astype(np.float32)
    # user labels may be any integers: map them to 0..C-1
    _, y = np.unique(y, return_inverse=True)
    return x, y.astype(np.int64)


_CIFAR10_FILES = tuple(f"cifar-10-batches-py/{f}" for f in
                       ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
                        "test_batch", "batches.meta"])
_CIFAR100_FILES = ("cifar-100-python/train", "cifar-100-python/test", "cifar-100-python/meta")
_MNIST_FILES = tuple(f"MNIST/raw/{f}" for f in
                     ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                      "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"])
# torchvision checks unlabeled_X.bin too, although only the labelled images are used here
_STL10_FILES = tuple(f"stl10_binary/{f}" for f in ["train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin",
                                                   "unlabeled_X.bin"])

DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec, replace: bool = False) -> DatasetSpec:
    """Add a dataset to the registry: its spec carries its loader, files and preset."""
    if spec.name in DATASETS and not replace:
        raise DatasetError(f"dataset: {spec.name!r} is already registered")
    if spec.name.endswith(".npz"):
        raise DatasetError(f"dataset: a registered name cannot end in .npz (that means a file): {spec.name!r}")
    DATASETS[spec.name] = spec
    return spec


_SGD = dict(optimizer="sgd", lr=0.1)
for _spec in [
    # ours: a tiny network and short schedules so that a trial takes seconds on 2 CPU cores.
    # RotNet features of 8x8 digits are poor (k-means ACC ~0.27, kNN-pair precision ~0.46);
    # SimCLR with its strong augmentation gives k-means ACC ~0.9, so digits pretrains with it.
    # Chosen with the labels (see the README's "Digits preset"). lsdc 0.3: width 0.125, 40 epochs
    # with lr 0.1 dropping at 32, T 11, MixUp (weight decay 1e-4 by MixUp's registry entry), SimCLR
    # for 50 epochs, evaluation every 5 epochs (and the last), so that Table 5's 16 trials fit in 10
    # minutes on 2 cores; lsdc 0.2 had width 0.25 and 30 epochs (lr drop at 24, T 8), which left
    # batch 256 below 90 % and took 10-12 minutes; lsdc 0.1 had RICAP, 20 epochs, lr 0.05 dropping
    # at 16, T 5 and 20 SimCLR epochs, which left large batches undertrained (60 steps at 512).
    DatasetSpec("digits", "image", 10, channels=1, size=8, mean=(0.3053,), std=(0.3759,), pad=1,
                flip=False, splits=("all",), classes=DIGIT_CLASSES, loader=_load_digits,
                source="scikit-learn's bundled digits (load_digits), scaled to 0-255",
                preset=dict(optimizer="sgd", epochs=40, lr_steps=(32,), lr=0.1, lam=2.0, rampup=11, labeler="knn",
                            mixing="mixup", eval_every=5,
                            width=0.125, batch_size=128, freeze_from=2, pretrain="simclr",
                            pretrain_augment="strong", pretrain_epochs=50, pretrain_batch_size=128)),
    DatasetSpec("mnist", "image", 10, channels=1, size=28, mean=(0.1307,), std=(0.3081,), pad=2,
                flip=False, classes=DIGIT_CLASSES, files=_MNIST_FILES, loader=_load_mnist,
                source="torchvision MNIST files",
                preset=dict(_SGD, epochs=15, lr_steps=(), lam=5.0, rampup=50, labeler="knn")),
    DatasetSpec("cifar10", "image", 10, channels=3, size=32, mean=(0.4914, 0.4822, 0.4465),
                std=(0.2023, 0.1994, 0.2010), pad=4, flip=True, classes=CIFAR10_CLASSES,
                files=_CIFAR10_FILES, loader=_load_cifar10, source="torchvision CIFAR-10 files",
                preset=dict(_SGD, epochs=220, lr_steps=(140, 180), lam=5.0, rampup=100, labeler="knn")),
    DatasetSpec("cifar100-20", "image", 20, channels=3, size=32, mean=(0.5071, 0.4865, 0.4409),
                std=(0.2673, 0.2564, 0.2762), pad=4, flip=True, classes=CIFAR100_20_CLASSES,
                files=_CIFAR100_FILES, loader=_load_cifar100_20, source="torchvision CIFAR-100 files, coarse labels",
                preset=dict(_SGD, epochs=200, lr_steps=(170,), lam=25.0, rampup=150, labeler="knn")),
    DatasetSpec("stl10", "image", 10, channels=3, size=96, mean=(0.4467, 0.4398, 0.4066),
                std=(0.2603, 0.2566, 0.2713), pad=12, flip=True, classes=STL10_CLASSES,
                files=_STL10_FILES, loader=_load_stl10, source="torchvision STL-10 files",
                preset=dict(_SGD, epochs=200, lr_steps=(140, 180), lam=5.0, rampup=50, labeler="sne")),
    DatasetSpec("reuters10k", "vector", 4, size=2000, splits=("all",), classes=REUTERS_CLASSES,
                files=("reutersidf10k.npy",), loader=_load_reuters10k, source="DEC's reutersidf10k file",
                preset=dict(optimizer="adam", epochs=75, lr_steps=(), lr=0.001, lam=25.0, rampup=100, labeler="knn",
                            pretrain="none", freeze_from=0, mixing="none", weight_decay=0.0)),
]:
    register_dataset(_spec)


def get_spec(name: str) -> DatasetSpec:
    """The spec of a registered dataset or of a user's .npz file; a one-line error otherwise."""
    if name in DATASETS:
        return DATASETS[name]
    if name.endswith(".npz"):
        return npz_spec(name)
    raise DatasetError(f"dataset: unknown {name!r}; allowed: {', '.join(DATASETS)}, or a path to an .npz file")


def check_available(name: str, root: str | None = None, download: bool = False) -> None:
    """Fail now (one line naming the files and the download flag) if a dataset is missing."""
    spec = get_spec(name)
    if spec.loader is None or not spec.files:
        return
    root = os.path.abspath(os.path.expanduser(root or "data"))
    if name == "reuters10k" and os.path.exists(os.path.join(root, "reutersidf10k.npz")):
        return
    if name == "cifar10" and all(os.path.exists(os.path.join(root, f)) for f in _CIFAR10_NPZ):
        return
    _require(root, spec.files, download, name)


def load(name: str, root: str | None = None, split: str = "all", download: bool = False) -> Dataset:
    """Load a dataset fully into memory (see the module docstring for the layout)."""
    spec = get_spec(name)
    if split not in spec.splits:
        raise DatasetError(f"split: {name!r} offers {', '.join(spec.splits)}, got {split!r}")
    lossy = False
    if spec.loader is None:
        x, y = _load_npz(name)
        source = f"user .npz file {os.path.abspath(name)}"
    else:
        root = os.path.abspath(os.path.expanduser(root or "data"))
        check_available(name, root, download)
        files = spec.files
        try:
            x, y = spec.loader(root, split, download)
        except RuntimeError as e:  # torchvision: "Dataset not found or corrupted."
            raise DatasetError(f"dataset {name!r} under {root!r}: {e} (expected {', '.join(files)})") from e
        source = spec.source or name
        if name == "cifar10" and not os.path.exists(os.path.join(root, _CIFAR10_FILES[0])):
            source, lossy = "decoded JPEG copy of CIFAR-10 (lossy): " + ", ".join(_CIFAR10_NPZ), True
        elif spec.files:
            source += f" under {root}"
    if len(x) != len(y):
        raise DatasetError(f"dataset {name!r}: {len(x)} images but {len(y)} labels; they must be of equal length")
    if len(np.unique(y)) < 2:
        raise DatasetError(f"dataset {name!r}: the labels hold {len(np.unique(y))} class(es); "
                           f"clustering needs at least 2")
    if spec.is_image and (x.dtype != np.uint8 or x.ndim != 4):
        raise DatasetError(f"dataset {name!r}: images must be uint8 N x H x W x C, got {x.dtype} {x.shape}")
    return Dataset(name=name, x=x, y=y, num_clusters=spec.num_clusters, spec=spec, split=split, source=source,
                   lossy=lossy)


_FINGERPRINTS: dict[tuple, str] = {}


def fingerprint(name: str, root: str | None = None, split: str = "all", download: bool = False) -> str:
    """The fingerprint of a dataset's ``split`` (loading it once per process and file version)."""
    spec = get_spec(name)
    root_abs = os.path.abspath(os.path.expanduser(root or "data"))
    files = [name] if spec.loader is None else [os.path.join(root_abs, f) for f in spec.files]
    if name == "cifar10":
        files += [os.path.join(root_abs, f) for f in _CIFAR10_NPZ]
    stamp = tuple((f, st.st_mtime_ns, st.st_size) for f in files for st in [_stat(f)] if st is not None)
    key = (name, root_abs, split, stamp)
    if key not in _FINGERPRINTS:
        _FINGERPRINTS[key] = load(name, root, split, download).fingerprint
    return _FINGERPRINTS[key]


def _stat(path: str):
    try:
        return os.stat(path)
    except OSError:
        return None


__all__ = ["CIFAR100_COARSE", "DATASETS", "Dataset", "DatasetError", "DatasetSpec", "check_available", "get_spec", "load",
           "npz_spec", "SPLITS"]
