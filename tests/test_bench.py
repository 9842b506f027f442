"""`dlab bench`'s measurements, report and how the planner reads it."""

from __future__ import annotations

import json

import pytest

from dlab.planner.plan import load_bench, make_plan
from dlab.planner.snapshot import load_snapshot
from dlab.profiles import example_machines
from dlab.runtime import bench
from dlab.runtime.backends import EagerBackend
from dlab.runtime.image import ImageModel


@pytest.fixture(scope="module")
def model(tiny_model_path):
    return ImageModel.load(tiny_model_path)


def test_step_times_for_eager_and_onnx(model, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    monkeypatch.setattr("platformdirs.user_cache_dir", lambda *a, **k: str(tmp_path))
    combos = [c for c in bench.backends_to_measure(model, cuda=False, cpu_fast_bf16=False)]
    assert [(b, p, d) for b, p, d, _ in combos] == [("eager", "fp32", "cpu"), ("onnx", "fp32", "cpu")]
    rows = bench.measure_step_times(model, combos, batches=(1, 2), repeat=2, log=lambda m: None)
    assert [(r["backend"], r["batch"], r["call_batch"]) for r in rows] == [
        ("eager", 1, 2), ("eager", 2, 4), ("onnx", 1, 2), ("onnx", 2, 4)]
    assert all(r["seconds"] > 0 for r in rows)
    assert rows[2]["provider"] == "CPUExecutionProvider"


def test_cfg_measurement(model):
    cfg = bench.measure_cfg(model, batch=2, repeat=2)
    assert cfg["batched_s"] > 0 and cfg["separate_s"] > 0
    assert cfg["speedup"] == pytest.approx(cfg["separate_s"] / cfg["batched_s"])


def test_sampler_timings_guide_as_generate_does(tiny_model_path, monkeypatch):
    """The sampler timings run each request with the model's recommended guidance interval and say so."""
    m = ImageModel.load(tiny_model_path)
    m.config["sampling"] = {"guidance_interval": [0, 700]}
    seen = []
    real = bench.generate_images
    monkeypatch.setattr(bench, "generate_images", lambda model, req, be: seen.append(req.guidance_interval) or real(model, req, be))
    s = bench.measure_samplers(m, EagerBackend(m.unet))
    assert seen == [(0, 700)] * 3 and s["guidance_interval"] == (0, 700)
    assert s["ddim50_s"] > 0 and s["ddpm1000_s"] > 0
    report = {"taken_at": "t", "torch": "x", "threads": 2, "model_hash": "0" * 12, "step_times": [],
              "onnx_vs_eager": [], "cfg": {"batch": 1, "batched_s": 1.0, "separate_s": 1.0, "speedup": 1.0},
              "samplers": s, "memory": []}
    assert "## Samplers (one image, guidance 3 on 0 ≤ t < 700, eager fp32)" in bench.to_markdown(report)


def test_memory_prediction_against_a_real_child_process():
    (row,) = bench.measure_memory(batches=(1,))
    assert 0.1 < row["measured_gib"] < 4  # python + torch + the 23 MB model
    assert row["ratio"] == pytest.approx(row["predicted_gib"] / row["measured_gib"])
    assert 0.65 < row["ratio"] < 1.35  # ±20 % measured here (1.00); the margin is for other machines' RSS


def test_report_round_trip_and_the_planner_reads_it(tmp_path):
    report = {
        "format": bench.FORMAT, "format_version": bench.FORMAT_VERSION, "dlab": "0", "taken_at": "2026-11-25T23:00:00+00:00",
        "torch": "2", "threads": 2, "model_hash": "ab" * 32,
        "step_times": [{"model": "shapes", "backend": "eager", "precision": "fp32", "device": "cpu", "provider": None,
                        "batch": 8, "call_batch": 16, "seconds": 0.2},
                       {"model": "shapes", "backend": "onnx", "precision": "fp32", "device": "cpu",
                        "provider": "CPUExecutionProvider", "batch": 8, "call_batch": 16, "seconds": 0.05}],
        "onnx_vs_eager": [{"device": "cpu", "batch": 8, "eager_over_onnx": 4.0}],
        "cfg": {"batch": 8, "batched_s": 0.1, "separate_s": 0.12, "speedup": 1.2},
        "samplers": {"backend": "eager", "ddim50_s": 1.0, "ddpm1000_s": 20.0, "ratio": 20.0, "ddim_per_step_ms": 20.0, "ddpm_per_step_ms": 20.0},
        "memory": [{"device": "cpu", "batch": 1, "measured_gib": 0.3, "predicted_gib": 0.27, "ratio": 0.9}],
    }
    jpath, mpath = bench.write_report(report, tmp_path)
    assert json.loads(jpath.read_text()) == report
    md = mpath.read_text()
    assert "| onnx | fp32 | cpu | 8 | 50.00 |" in md and "×20.0" in md and "| cpu | 1 | 0.300 | 0.270 | 0.90 |" in md
    loaded = load_bench(tmp_path / "latest.json")
    assert loaded == report
    plan = make_plan("shapes", load_snapshot(example_machines()["cpu_laptop"]), batch=8, bench=loaded)
    assert plan.backend == "onnx" and plan.measured
    assert load_bench(tmp_path / "missing.json") is None
    (tmp_path / "bad.json").write_text("{not json")
    assert load_bench(tmp_path / "bad.json") is None
