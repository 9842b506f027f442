"""The fit planner: catalog, memory model against published figures, plans for every example machine."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from dlab.cli import app
from dlab.errors import BadInput, DlabError, ProfileError
from dlab.planner.calibration import calibration_rows
from dlab.planner.fit import GiB, Config, Device, estimate
from dlab.planner.plan import check_request, make_plan, parse_resolution
from dlab.planner.snapshot import load_snapshot
from dlab.profiles import PROFILES_DIR, example_machines, load_model_catalog, model_catalog

runner = CliRunner()
MACHINES = {name: load_snapshot(path) for name, path in example_machines().items()}
MODELS = [m.id for m in model_catalog().model]


# ------------------------------------------------------------------------------------ catalog
def test_catalog_has_the_models_the_planner_promises():
    ids = set(MODELS)
    assert {"shapes", "sd15", "sd21", "sdxl", "sd35-medium", "sd35-large", "flux-schnell", "flux-dev", "tortoise"} <= ids
    for m in model_catalog().model:
        assert m.source and all(c.source for c in m.component) and all(f.source for f in m.published)
        assert m.denoiser.params > 0
    sd3 = model_catalog().get("sd35-large")
    assert [c.name for c in sd3.component if c.optional] == ["t5-xxl"]  # SD3's T5 may be dropped


def test_catalog_validation_names_file_and_field(tmp_path):
    text = (PROFILES_DIR / "models.toml").read_text().replace('bound = "upper"', 'bound = "sideways"', 1)
    bad = tmp_path / "models.toml"
    bad.write_text(text)
    with pytest.raises(ProfileError) as e:
        load_model_catalog(bad)
    assert str(bad) in str(e.value) and "bound" in str(e.value)


# ------------------------------------------------------------------------------------ calibration
@pytest.mark.parametrize("row", calibration_rows(), ids=lambda r: f"{r['model']}-{r['what']}-{r['precision']}-b{r['batch']}-{r['offload']}-{r['outcome']}")
def test_memory_model_meets_every_published_figure(row):
    """Measured peaks within ±20 %; published OOMs predicted not to fit; stated minimum cards enough."""
    assert row["ok"], row


def test_published_anchors_named_in_the_issue():
    rows = {(r["model"], r["precision"], r["batch"], r["offload"], r["outcome"]): r for r in calibration_rows()}
    flux = rows[("flux-dev", "bf16", 1, "none", "ran")]
    assert flux["published_gib"] == pytest.approx(36.166) and 0.8 <= flux["ratio"] <= 1.2
    flux_offload = rows[("flux-dev", "bf16", 1, "model", "ran")]
    assert 0.8 <= flux_offload["ratio"] <= 1.2
    sdxl = rows[("sdxl", "fp32", 4, "none", "ran")]
    assert sdxl["published_gib"] == pytest.approx(28.09) and 0.8 <= sdxl["ratio"] <= 1.2


def test_memory_grows_with_batch_resolution_and_cfg():
    m = model_catalog().get("sdxl")
    big = Device(kind="cuda", name="x", memory_bytes=1e15, tflops=100, bandwidth_gbs=1000, pcie_gbs=24)
    base = estimate(m, Config("bf16", 1024, 1024, 1), big)
    assert estimate(m, Config("bf16", 1024, 1024, 2), big).peak_bytes > base.peak_bytes
    assert estimate(m, Config("bf16", 1536, 1536, 1), big).peak_bytes > base.peak_bytes
    assert estimate(m, Config("bf16", 1024, 1024, 1, cfg=False), big).parts["denoiser_activations"] == pytest.approx(
        base.parts["denoiser_activations"] / 2)
    assert estimate(m, Config("fp32", 1024, 1024, 1), big).parts["weights"] == pytest.approx(2 * base.parts["weights"])
    offload = estimate(m, Config("bf16", 1024, 1024, 1, offload="model"), big)
    assert offload.peak_bytes < base.peak_bytes and offload.ram_bytes > base.ram_bytes  # VRAM traded for RAM
    seq = estimate(m, Config("bf16", 1024, 1024, 1, offload="sequential"), big)
    assert seq.peak_bytes < offload.peak_bytes and seq.seconds_per_image > offload.seconds_per_image


# ------------------------------------------------------------------------------------ plans
@pytest.mark.parametrize("machine", sorted(MACHINES))
@pytest.mark.parametrize("model", MODELS)
def test_plan_for_every_example_machine_and_model(machine, model):
    snap = MACHINES[machine]
    p = make_plan(model, snap)
    assert p.why["device"] and p.why["precision"] and p.why["offload"] and p.why["batch"] and p.why["backend"]
    if p.fits:
        if p.device.startswith("cuda"):
            gpu = snap.gpus[int(p.device.split(":")[1])]
            # plans against ONE GPU's free VRAM, never the sum across GPUs
            assert p.vram_gib <= p.budget_gib <= gpu.memory_free_bytes / GiB
        assert p.ram_gib <= p.ram_budget_gib
        assert (p.seconds_per_image or p.seconds_per_audio_second) > 0
        # never a configuration a published run ran out of memory with, on a card that size or smaller
        for f in model_catalog().get(model).published:
            if f.outcome == "oom" and p.device.startswith("cuda") and (f.resolution is None or (p.width, p.height) == f.resolution):
                same = (f.precision == p.precision and f.offload == p.offload and p.batch >= f.batch)
                assert not (same and p.budget_gib <= f.value), f
    else:
        assert p.vram_gib is None or p.vram_gib > p.budget_gib or p.ram_gib > p.ram_budget_gib


def test_plans_people_expect_on_the_ladder():
    cpu, app_, main, dessert = (MACHINES[n] for n in ("cpu_laptop", "appetizer", "main_course", "dessert"))
    assert make_plan("shapes", cpu).fits and make_plan("shapes", cpu).device == "cpu"
    assert not make_plan("flux-dev", cpu).fits  # 16 GB of RAM cannot hold Flux
    sdxl = make_plan("sdxl", app_)
    assert sdxl.fits and sdxl.device == "cuda:0" and sdxl.precision == "bf16" and sdxl.offload == "none"
    flux = make_plan("flux-dev", main)
    assert flux.fits and (flux.precision, flux.offload) != ("bf16", "none")  # 36 GiB does not fit 24 GB
    two = make_plan("flux-dev", dessert)
    assert two.fits and two.vram_gib <= 24  # two 24 GB cards are not one 48 GB card
    sd3 = make_plan("sd35-large", app_)
    assert sd3.fits and sd3.vram_gib <= sd3.budget_gib


def test_explicit_request_that_does_not_fit_names_the_nearest():
    p = make_plan("sdxl", MACHINES["appetizer"], resolution=(4096, 4096), batch=8)
    assert not p.fits and p.nearest
    with pytest.raises(BadInput, match="nearest that fits"):
        check_request(p)


def test_bad_input_is_one_line():
    with pytest.raises(BadInput, match="unknown model 'nope'"):
        make_plan("nope", MACHINES["appetizer"])
    for bad in ("1024", "axb", "0x0", "99999x2"):
        with pytest.raises(BadInput):
            parse_resolution(bad)
    with pytest.raises(BadInput, match="multiples of 8"):
        make_plan("sdxl", MACHINES["appetizer"], resolution=(1001, 1001))


def test_cli_plan_json_and_exit_codes():
    r = runner.invoke(app, ["plan", "sdxl", "--snapshot", str(example_machines()["appetizer"]), "--json"])
    assert r.exit_code == 0, r.output
    p = json.loads(r.stdout)
    assert p["fits"] and p["model"] == "sdxl" and p["vram_gib"] > 5
    r = runner.invoke(app, ["plan", "flux-dev", "--snapshot", str(example_machines()["cpu_laptop"])])
    assert r.exit_code == 1 and "does not fit" in r.stdout
    for args in (["plan", "nope"], ["plan", "sdxl", "--resolution", "big"], ["plan", "sdxl", "--emit", "krita"]):
        r = runner.invoke(app, [*args, "--snapshot", str(example_machines()["appetizer"])])
        # main() turns a DlabError into one line and exit 2; the runner calls the app beneath it
        assert isinstance(r.exception, DlabError) and r.exception.exit_code == 2, (args, r.output)


def test_bench_report_beats_the_flops_model():
    snap = MACHINES["cpu_laptop"]
    bench = {"step_times": [
        {"model": "shapes", "backend": "eager", "precision": "fp32", "device": "cpu", "batch": 8, "call_batch": 16, "seconds": 0.16},
        {"model": "shapes", "backend": "onnx", "precision": "fp32", "device": "cpu", "batch": 8, "call_batch": 16, "seconds": 0.04},
    ]}
    p = make_plan("shapes", snap, batch=8, bench=bench)
    assert p.measured and p.backend == "onnx" and "fastest" in p.why["backend"]
    # 52 steps (50 + fixed overhead) × 16 samples × 2.5 ms / 8 images
    assert p.seconds_per_image == pytest.approx(52 * 16 * 0.04 / 16 / 8)
    assert not make_plan("shapes", snap, batch=8).measured
