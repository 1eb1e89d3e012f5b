"""The GPU check's parts that run anywhere: the data packed to travel and unpacked there
(.ci/gpu_data.py), the benchmark's variant names with a precision, and a run that records a
failed variant and keeps going."""
import csv
import io
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from lsdc import bench, data

pytestmark = pytest.mark.unit
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GPU_DATA = os.path.join(ROOT, ".ci", "gpu_data.py")


def _cifar_archive(path, rng):
    """A small archive in the layout of ../shared/data/cifar10_jpeg.tar.gz (JPEG files, labels.csv)."""
    from PIL import Image
    arrays = {}
    with tarfile.open(path, "w:gz") as tf:
        for split, n in (("train", 5), ("test", 3)):
            # smooth images (8x8 blocks), which JPEG keeps close to the truth
            x = np.kron(rng.integers(0, 256, (n, 4, 4, 3)), np.ones((1, 8, 8, 1))).astype(np.uint8)
            y = rng.integers(0, 10, n)
            rows = io.StringIO()
            w = csv.writer(rows)
            w.writerow(["index", "label"])
            for i in range(n):
                buf = io.BytesIO()
                Image.fromarray(x[i]).save(buf, format="JPEG", quality=95)
                info = tarfile.TarInfo(f"{split}/{i:06d}.jpg")
                info.size = len(buf.getvalue())
                tf.addfile(info, io.BytesIO(buf.getvalue()))
                w.writerow([i, int(y[i])])
            blob = rows.getvalue().encode()
            info = tarfile.TarInfo(f"{split}/labels.csv")
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))
            arrays[split] = (x, y)
    return arrays


def test_data_packed_to_travel_unpacks_to_what_lsdc_reads(tmp_path):
    rng = np.random.default_rng(0)
    shared, packed = tmp_path / "shared", tmp_path / "packed"
    shared.mkdir()
    mnist = {}
    for name, n in (("mnist_train.npz", 7), ("mnist_test.npz", 4)):
        x, y = rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8), rng.integers(0, 10, n)
        np.savez(shared / name, images=x, labels=y)
        mnist[name] = (x, y)
    cifar = _cifar_archive(shared / "cifar10_jpeg.tar.gz", rng)
    for argv in (["pack", str(shared), str(packed)], ["unpack", str(packed)]):
        run = subprocess.run([sys.executable, GPU_DATA, *argv], capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
    assert sorted(os.listdir(packed)) == ["MNIST", "cifar10_all.npz", "cifar10_jpeg.tar.gz", "cifar10_test.npz",
                                          "cifar10_train.npz", "mnist.u8.xz"]
    ds = data.load("mnist", str(packed), "all", False)      # torchvision's reader of the IDX files
    assert ds.source.startswith("torchvision MNIST files")
    np.testing.assert_array_equal(ds.x, np.concatenate([mnist["mnist_train.npz"][0], mnist["mnist_test.npz"][0]]))
    np.testing.assert_array_equal(ds.y, np.concatenate([mnist["mnist_train.npz"][1], mnist["mnist_test.npz"][1]]))
    c10 = data.load("cifar10", str(packed), "all", False)
    assert c10.lossy and c10.x.shape == (8, 32, 32, 3)
    np.testing.assert_array_equal(c10.y, np.concatenate([cifar["train"][1], cifar["test"][1]]))
    truth = np.concatenate([cifar["train"][0], cifar["test"][0]]).astype(int)
    assert np.abs(c10.x.astype(int) - truth).mean() < 12          # JPEG at quality 95: close, not equal
    with np.load(packed / "cifar10_all.npz") as z:
        np.testing.assert_array_equal(z["images"], c10.x)


def test_bad_mnist_file_is_refused_with_its_name(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    np.savez(shared / "mnist_train.npz", images=np.zeros((3, 32, 32), np.uint8), labels=np.zeros(3))
    np.savez(shared / "mnist_test.npz", images=np.zeros((3, 28, 28), np.uint8), labels=np.zeros(3))
    (shared / "cifar10_jpeg.tar.gz").write_bytes(b"")
    run = subprocess.run([sys.executable, GPU_DATA, "pack", str(shared), str(tmp_path / "p")], capture_output=True,
                         text=True, timeout=60)
    assert run.returncode != 0 and "mnist_train.npz: expected N x 28 x 28" in run.stderr


def test_variant_names_carry_a_precision():
    assert bench.parse_variant("eager") == ("eager", None)
    assert bench.parse_variant("compiled-fused:tf32") == ("compiled-fused", "tf32")
    with pytest.raises(ValueError, match="unknown precision 'fp16'; allowed: fp32, tf32, bf16"):
        bench.parse_variant("eager:fp16")
    with pytest.raises(ValueError, match="'reference' .* takes no precision"):
        bench.parse_variant("reference:bf16")
    with pytest.raises(ValueError, match="--variants: unknown 'warp'"):
        bench.parse_variant("warp:bf16")


def test_a_failed_variant_is_recorded_and_the_others_still_run(tmp_path, monkeypatch, capsys):
    seen = []

    def fake_trial(cfg, env, warmup, steps):
        seen.append(cfg.precision)
        if cfg.precision == "tf32":
            raise RuntimeError("CUDA error: an illegal memory access")
        return {"seconds": 1.0, "images": 256 * steps, "steps": steps, "flops_per_step": None, "peak_mem_gb": None,
                "compile_s": None, "unit": "images"}
    monkeypatch.setattr(bench, "bench_trial", fake_trial)
    out = tmp_path / "b.json"
    assert bench.main(["--device", "cpu", "--n", "64", "--size", "8", "--steps", "2", "--precision", "bf16",
                       "--variants", "eager:tf32,eager,fused:fp32", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    rows = res["results"]
    assert [r["variant"] for r in rows] == ["eager:tf32", "eager", "fused:fp32"]
    assert rows[0]["error"].startswith("RuntimeError: CUDA error") and "Traceback" in rows[0]["traceback"]
    assert rows[1]["precision"] == "bf16" and rows[1]["images_per_s"] == 512.0
    assert rows[2]["precision"] == "fp32" and seen == ["tf32", "bf16", "fp32"]
    assert res["settings"]["precision"] == "bf16"
    text = capsys.readouterr().out
    assert "eager:tf32       FAILED: RuntimeError" in text and "failed: RuntimeError" in text


def test_an_interrupted_run_keeps_what_it_measured(tmp_path, monkeypatch):
    def fake_trial(cfg, env, warmup, steps):
        if cfg.fused_views:
            raise KeyboardInterrupt          # what timeout -s INT does
        return {"seconds": 2.0, "images": 100, "steps": steps, "flops_per_step": None, "peak_mem_gb": None,
                "compile_s": None, "unit": "images"}
    monkeypatch.setattr(bench, "bench_trial", fake_trial)
    out = tmp_path / "b.json"
    try:
        code = bench.main(["--device", "cpu", "--n", "64", "--size", "8", "--variants", "eager,fused,compiled",
                           "--json", str(out)])
    except KeyboardInterrupt:
        pytest.fail("the interrupt escaped lsdc.bench instead of ending the run with what it measured")
    assert code == 130
    res = json.loads(out.read_text())
    rows = res["results"]
    assert res["interrupted"] is True
    assert [(r["variant"], r.get("error")) for r in rows] == [("eager", None), ("fused", "interrupted")]
    assert rows[0]["images_per_s"] == 50.0 and not os.path.exists(f"{out}.tmp")


def test_the_gpu_checks_script_parses_and_names_only_known_variants():
    script = os.path.join(ROOT, ".ci", "gpu-check")
    assert subprocess.run(["bash", "-n", script]).returncode == 0
    text = open(script).read().replace("\\\n", "")
    variants = text.split("--variants", 1)[1].split()[0]
    names = variants.split(",")
    assert len(names) >= 15 and all(bench.parse_variant(v) for v in names)
    assert {"reference", "compiled:bf16", "ray-4:bf16", "compiled:fp32", "eager:tf32"} <= set(names)


def test_profile_of_a_few_steps_on_the_cpu():
    import torch
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU())
    x = torch.randn(4, 3, 16, 16)
    p = bench.profile_steps(lambda: net(x).sum().backward(), torch.device("cpu"), steps=3, top=5)
    assert p["steps"] == 3 and p["wall_ms_per_step"] > 0
    assert p["device_busy_share"] is None and p["top_kernels_ms_per_step"] == []      # no GPU: no kernels
    names = [k for k, _ in p["top_cpu_ops_ms_per_step"]]
    assert len(names) == 5 and any("conv" in k for k in names)
