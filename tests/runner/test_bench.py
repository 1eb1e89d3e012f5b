"""The benchmark's CPU mode, so that it cannot rot."""
import json

from lsdc.bench import main


def test_bench_cpu_mode_writes_every_variant(joined, tmp_path, capsys):
    import ray
    out = tmp_path / "bench.json"
    assert main(["--device", "cpu", "--small", "--n", "300", "--steps", "2", "--warmup", "1", "--workers", "1",
                 "--variants", "reference,eager,fused,rotnet,eval,ray-1", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    rows = {r["variant"]: r for r in res["results"]}
    assert set(rows) == {"reference", "eager", "fused", "rotnet", "eval", "ray-1"}
    for name in ("reference", "eager", "fused", "rotnet", "ray-1"):
        assert rows[name]["images_per_s"] > 0
    assert rows["reference"]["ratio_to_reference"] == 1.0 and rows["eager"]["ratio_to_reference"] > 0
    assert rows["eager"]["tflops"] > 0 and rows["eval"]["images"] == 300
    assert res["settings"]["batch_size"] == 64 and res["hardware"]["cpu_count"]
    text = capsys.readouterr().out
    assert "vs reference" in text and "| eager" in text
    assert ray.is_initialized()          # the caller's Ray (here the shared cluster) is left connected


def test_bench_rejects_unknown_variant(capsys):
    assert main(["--variants", "warp-speed"]) == 2
    assert "--variants: unknown 'warp-speed'" in capsys.readouterr().err
