"""`dlab upgrade` (the ladder and the cheapest change for a goal) and `dlab plan --emit`."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from dlab.cli import app
from dlab.errors import BadInput, DlabError
from dlab.planner.emit import EMITTERS, emit_plan
from dlab.planner.plan import make_plan
from dlab.planner.snapshot import GiB, load_snapshot
from dlab.planner.upgrade import cheapest_change, parse_goal, upgrade_path
from dlab.profiles import example_machines

runner = CliRunner()
MACHINES = {name: load_snapshot(path) for name, path in example_machines().items()}


def test_ladder_from_a_cpu_laptop():
    path = upgrade_path(MACHINES["cpu_laptop"])
    assert path.tier_id == "amuse-bouche"
    assert [s.tier_id for s in path.steps] == ["appetizer", "main-course", "dessert"]
    first = path.steps[0]
    assert first.price_usd and {"sdxl", "flux-dev"} <= set(first.newly_fits)
    sd15 = next(w for w in first.faster if w.model == "sd15")
    assert sd15.speedup > 10  # a GPU against a laptop CPU
    main = path.steps[1]
    assert all(w.speedup > 1.5 for w in main.faster if w.model in ("sdxl", "flux-dev"))  # 4090 vs 4070 Ti


def test_top_of_the_ladder_has_no_steps():
    assert upgrade_path(MACHINES["dessert"]).steps == []


def test_ram_is_the_cheapest_change_when_only_offload_ram_is_missing():
    snap = MACHINES["appetizer"]
    mem = snap.memory.model_copy(update={"total_bytes": 16 * 10**9, "available_bytes": 13 * 10**9})
    small_ram = snap.model_copy(update={"memory": mem})
    assert not make_plan("flux-dev", small_ram).fits  # the 12 GB card needs offload, offload needs RAM
    change = cheapest_change(small_ram, "flux-dev", (1024, 1024), None)
    assert change.met and not change.already and change.change.startswith("RAM to 32 GB")
    assert change.price_usd < 200 and change.plan.fits and change.plan.offload != "none"
    assert any("GPU" in a or "replace" in a for a in change.alternatives)


def test_gpu_is_the_change_when_vram_binds():
    change = cheapest_change(MACHINES["cpu_laptop"], "sdxl", (1024, 1024), None)
    assert change.met and "NVIDIA" in change.change and change.plan.device.startswith("cuda")


def test_goal_already_met_and_impossible_goal():
    assert cheapest_change(MACHINES["main_course"], "sd15", None, None).already
    # 64 SDXL images at 4096² at once: no single card in the catalog
    impossible = cheapest_change(MACHINES["appetizer"], "sdxl", (4096, 4096), 64)
    assert not impossible.met and "no single change" in impossible.why


def test_goal_parsing():
    assert parse_goal("flux-dev@1024x1024") == ("flux-dev", (1024, 1024), None)
    assert parse_goal("sdxl@832x1216x4") == ("sdxl", (832, 1216), 4)
    assert parse_goal("sd15") == ("sd15", None, None)
    for bad in ("flux-dev@big", "nope@512x512", "sdxl@512x512x0", ""):
        with pytest.raises(BadInput):
            parse_goal(bad)


def test_cli_upgrade():
    snap = str(example_machines()["cpu_laptop"])
    r = runner.invoke(app, ["upgrade", "--snapshot", snap, "--goal", "sdxl@1024x1024", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["path"]["steps"][0]["tier_id"] == "appetizer" and out["goal"]["met"]
    r = runner.invoke(app, ["upgrade", "--snapshot", snap, "--goal", "flux-dev@huge"])
    assert isinstance(r.exception, DlabError) and r.exception.exit_code == 2


# ------------------------------------------------------------------------------------ emit
@pytest.mark.parametrize("tool", sorted(EMITTERS))
def test_emit_every_tool_for_every_offload(tool):
    for machine, model in (("appetizer", "sdxl"), ("appetizer", "flux-dev"), ("cpu_laptop", "sd15")):
        plan = make_plan(model, MACHINES[machine])
        text = emit_plan(plan, tool)
        assert text.strip()
        if tool == "diffusers" and not text.startswith("#"):
            compile(text, f"<{model}>", "exec")  # valid Python
            assert {"none": 'pipe.to("cuda:0")', "model": "enable_model_cpu_offload", "sequential": "enable_sequential_cpu_offload"}[
                plan.offload] in text or plan.device == "cpu"
            assert {"bf16": "torch.bfloat16", "fp16": "torch.float16", "fp32": "torch.float32", "fp8": "float8", "nf4": "nf4"}[plan.precision] in text


def test_emit_flags_follow_the_plan():
    sdxl = make_plan("sdxl", MACHINES["appetizer"])
    assert "--highvram" in emit_plan(sdxl, "comfyui") and "--bf16-unet" in emit_plan(sdxl, "comfyui")
    flux = make_plan("flux-dev", MACHINES["appetizer"])
    assert flux.offload == "model" and "--lowvram" in emit_plan(flux, "comfyui")
    assert "enable_partial_loading: true" in emit_plan(flux, "invokeai")
    laptop = make_plan("sd15", MACHINES["cpu_laptop"])
    assert "--use-cpu all" in emit_plan(laptop, "a1111") and "--cpu" in emit_plan(laptop, "comfyui")
    assert "dlab generate" in emit_plan(make_plan("shapes", MACHINES["appetizer"]), "comfyui")
