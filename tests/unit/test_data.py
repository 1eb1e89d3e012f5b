"""Dataset loaders on small files written in the official formats, and the real copies in ../shared/data."""
import os
import pickle
import struct

import numpy as np
import pytest

from lsdc import data
from conftest import SHARED_DATA


@pytest.fixture
def no_md5(monkeypatch):
    """torchvision checks the MD5 of the official files; our small fixtures can't match it."""
    import torchvision.datasets.cifar as cifar
    import torchvision.datasets.stl10 as stl10
    monkeypatch.setattr(cifar, "check_integrity", lambda *a, **k: True)
    monkeypatch.setattr(stl10, "check_integrity", lambda *a, **k: True)


def test_coarse_map_has_five_fine_classes_per_superclass():
    assert len(data.CIFAR100_COARSE) == 100
    assert np.array_equal(np.bincount(data.CIFAR100_COARSE), np.full(20, 5))
    assert data.CIFAR100_COARSE[:5] == (4, 1, 14, 8, 0)  # apple: fruit & veg, aquarium fish: fish, ...


def test_digits_is_embedded():
    ds = data.load("digits")
    assert ds.x.shape == (1797, 8, 8, 1) and ds.x.dtype == np.uint8
    assert ds.num_clusters == 10 and set(np.unique(ds.y)) == set(range(10))
    assert ds.x.max() == 255


def test_unknown_dataset_names_the_allowed_ones():
    with pytest.raises(data.DatasetError, match="dataset: unknown 'cifar11'.*digits.*cifar10"):
        data.get_spec("cifar11")


@pytest.mark.parametrize("name,expect", [("cifar10", "cifar-10-batches-py/data_batch_1"),
                                         ("mnist", "MNIST/raw/train-images-idx3-ubyte"),
                                         ("cifar100-20", "cifar-100-python/train"),
                                         ("stl10", "stl10_binary/train_X.bin"),
                                         ("reuters10k", "reutersidf10k.npy")])
def test_missing_dataset_names_files_and_download_flag(tmp_path, name, expect):
    with pytest.raises(data.DatasetError) as e:
        data.load(name, str(tmp_path))
    msg = str(e.value)
    assert expect in msg and "--download" in msg and "\n" not in msg


def write_idx(path, arr):
    arr = np.asarray(arr, dtype=np.uint8)
    magic = 0x0800 | arr.ndim
    with open(path, "wb") as f:
        f.write(struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in arr.shape) + arr.tobytes())


def make_mnist(root, n_train=12, n_test=5, src=None):
    raw = os.path.join(root, "MNIST", "raw")
    os.makedirs(raw, exist_ok=True)
    rng = np.random.default_rng(0)
    if src is None:
        src = {"train": (rng.integers(0, 256, (n_train, 28, 28)), rng.integers(0, 10, n_train)),
               "t10k": (rng.integers(0, 256, (n_test, 28, 28)), rng.integers(0, 10, n_test))}
    for prefix, (x, y) in src.items():
        write_idx(os.path.join(raw, f"{prefix}-images-idx3-ubyte"), x)
        write_idx(os.path.join(raw, f"{prefix}-labels-idx1-ubyte"), y)
    return src


def test_mnist_idx_files_through_torchvision(tmp_path):
    src = make_mnist(str(tmp_path))
    ds = data.load("mnist", str(tmp_path), "all")
    assert ds.x.shape == (17, 28, 28, 1)
    assert np.array_equal(ds.x[:12, ..., 0], src["train"][0])
    assert np.array_equal(ds.y[12:], src["t10k"][1])
    assert len(data.load("mnist", str(tmp_path), "test")) == 5


def pickle_to(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def test_cifar10_python_batches(tmp_path, no_md5):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(1)
    batches = {}
    for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]:
        x = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
        y = rng.integers(0, 10, 3).tolist()
        pickle_to(folder / name, {"data": x, "labels": y})
        batches[name] = (x, y)
    pickle_to(folder / "batches.meta", {"label_names": list(data.CIFAR10_CLASSES)})
    ds = data.load("cifar10", str(tmp_path), "all")
    assert ds.x.shape == (18, 32, 32, 3)
    x0, y0 = batches["data_batch_1"]
    assert np.array_equal(ds.x[0], x0[0].reshape(3, 32, 32).transpose(1, 2, 0))  # CHW rows -> HWC
    assert ds.y[:3].tolist() == y0
    assert ds.y[-3:].tolist() == batches["test_batch"][1]
    assert len(data.load("cifar10", str(tmp_path), "train")) == 15


def test_cifar100_20_uses_coarse_labels(tmp_path, no_md5):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(2)
    coarse_in_file = {}
    for name in ("train", "test"):
        fine = rng.integers(0, 100, 8)
        coarse = [data.CIFAR100_COARSE[f] for f in fine]
        pickle_to(folder / name, {"data": rng.integers(0, 256, (8, 3072), dtype=np.uint8),
                                  "fine_labels": fine.tolist(), "coarse_labels": coarse})
        coarse_in_file[name] = coarse
    pickle_to(folder / "meta", {"fine_label_names": [str(i) for i in range(100)]})
    ds = data.load("cifar100-20", str(tmp_path), "all")
    assert ds.num_clusters == 20
    assert ds.y.tolist() == coarse_in_file["train"] + coarse_in_file["test"]


def test_stl10_binary(tmp_path, no_md5):
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    rng = np.random.default_rng(3)
    imgs = {}
    for split, n in (("train", 3), ("test", 2)):
        x = rng.integers(0, 256, (n, 96, 96, 3), dtype=np.uint8)
        imgs[split] = x
        # the official files are column-major: N x C x W x H
        x.transpose(0, 3, 2, 1).tofile(folder / f"{split}_X.bin")
        np.array([1, 10, 5][:n], dtype=np.uint8).tofile(folder / f"{split}_y.bin")
    (folder / "unlabeled_X.bin").write_bytes(b"")
    ds = data.load("stl10", str(tmp_path), "all")
    assert ds.x.shape == (5, 96, 96, 3)
    assert np.array_equal(ds.x[:3], imgs["train"]) and np.array_equal(ds.x[3:], imgs["test"])
    assert ds.y.tolist() == [0, 9, 4, 0, 9]


def test_reuters10k_dec_npy(tmp_path):
    rng = np.random.default_rng(4)
    x = rng.random((20, 2000)).astype(np.float32)
    y = rng.integers(0, 4, 20)
    np.save(tmp_path / "reutersidf10k.npy", {"data": x, "label": y}, allow_pickle=True)
    ds = data.load("reuters10k", str(tmp_path))
    assert ds.x.shape == (20, 2000) and ds.x.dtype == np.float32
    assert ds.y.tolist() == y.tolist() and ds.num_clusters == 4


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_reuters_loader_never_runs_code_from_the_file(tmp_path):
    np.save(tmp_path / "reutersidf10k.npy", np.array([_Evil()], dtype=object), allow_pickle=True)
    with pytest.raises(data.DatasetError, match="refusing to load posix.system|refusing to load os.system"):
        data.load("reuters10k", str(tmp_path))


def test_user_npz_dataset(tmp_path):
    rng = np.random.default_rng(5)
    path = str(tmp_path / "mine.npz")
    np.savez(path, images=rng.integers(0, 256, (30, 16, 16, 3), dtype=np.uint8), labels=rng.integers(7, 10, 30))
    spec = data.get_spec(path)
    assert spec.is_image and spec.size == 16 and spec.channels == 3 and spec.num_clusters == 3
    ds = data.load(path)
    assert ds.x.shape == (30, 16, 16, 3) and set(ds.y.tolist()) == {0, 1, 2}


def test_npz_without_images_names_the_arrays(tmp_path):
    path = str(tmp_path / "bad.npz")
    np.savez(path, pictures=np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(data.DatasetError, match="'images'.*'labels'"):
        data.get_spec(path)


@pytest.mark.skipif(not os.path.exists(os.path.join(SHARED_DATA, "mnist_test.npz")), reason="no shared data")
def test_real_mnist_copy_as_npz_and_as_idx(tmp_path):
    test = data.load(os.path.join(SHARED_DATA, "mnist_test.npz"))
    assert test.x.shape == (10000, 28, 28, 1) and test.num_clusters == 10
    assert np.bincount(test.y).tolist()[:3] == [980, 1135, 1032]
    with np.load(os.path.join(SHARED_DATA, "mnist_test.npz")) as z:
        make_mnist(str(tmp_path), src={"t10k": (z["images"][..., 0], z["labels"]),
                                       "train": (z["images"][:5, ..., 0], z["labels"][:5])})
    via_tv = data.load("mnist", str(tmp_path), "test")
    assert np.array_equal(via_tv.x, test.x) and np.array_equal(via_tv.y, test.y)


@pytest.mark.pipeline
@pytest.mark.skipif(not os.path.exists(os.path.join(SHARED_DATA, "cifar10_jpeg.tar.gz")), reason="no shared data")
def test_real_cifar10_jpeg_copy_decoded_to_npz(tmp_path):
    tool = os.path.join(SHARED_DATA, "..", "tools", "cifar10-jpeg-to-npz")
    import subprocess
    import sys
    out = subprocess.run([sys.executable, tool, os.path.join(SHARED_DATA, "cifar10_jpeg.tar.gz"), str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    ds = data.load("cifar10", str(tmp_path), "all")       # the registered dataset reads the decoded pair
    assert ds.x.shape == (60000, 32, 32, 3) and np.bincount(ds.y).tolist() == [6000] * 10
    assert len(data.load("cifar10", str(tmp_path), "test")) == 10000
