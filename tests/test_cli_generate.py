"""`dlab generate image`, `dlab noise` and `dlab train image` as a user runs them (subprocesses)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from dlab.runtime.image import BUILTIN_IMAGE_MODEL
from dlab.runtime.outputs import read_png_params


def dlab(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "dlab", *args], capture_output=True, text=True, timeout=600, cwd=cwd)


def one_line_exit_2(r, needle):
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("args,needle", [
    (["--steps", "0"], "--steps"), (["--steps", "1001"], "--steps"), (["--guidance", "-1"], "--guidance"),
    (["--batch", "0"], "--batch"), (["--batch", "100000"], "--batch"), (["--sampler", "euler"], "--sampler"),
    (["--trace", "1"], "--trace"), (["--precision", "fp8"], "precision"),
    (["--guidance-interval", "late"], "--guidance-interval"), (["--guidance-interval", "700:100"], "--guidance-interval"),
    (["--guidance-interval", "0:1001"], "--guidance-interval"), (["--guidance-interval", ""], "--guidance-interval"),
])
def test_bad_options_one_line_exit_2(tmp_path, args, needle):
    one_line_exit_2(dlab("generate", "image", "a red circle", "--out", str(tmp_path), *args), needle)


@pytest.mark.parametrize("prompt,needle", [("", "empty"), ("   ", "empty"), ("x" * 600, "characters")])
def test_empty_or_absurd_prompt(tmp_path, prompt, needle):
    one_line_exit_2(dlab("generate", "image", prompt, "--out", str(tmp_path)), needle)


def test_unwritable_out(tmp_path):
    f = tmp_path / "a-file"
    f.write_text("")
    one_line_exit_2(dlab("generate", "image", "a red circle", "--out", str(f)), "--out")


def test_corrupt_or_missing_weights(tmp_path, tiny_model_path):
    one_line_exit_2(dlab("generate", "image", "a circle", "--model", str(tmp_path / "nope.safetensors"),
                         "--out", str(tmp_path)), "no such file")
    bad = tmp_path / "shapes.safetensors"
    bad.write_bytes(tiny_model_path.read_bytes()[:1000])
    (tmp_path / "shapes.json").write_text(tiny_model_path.with_suffix(".json").read_text())
    one_line_exit_2(dlab("generate", "image", "a circle", "--model", str(bad), "--out", str(tmp_path)), "safetensors")
    bad.write_bytes(tiny_model_path.read_bytes())
    config = json.loads(tiny_model_path.with_suffix(".json").read_text())
    (tmp_path / "shapes.json").write_text(json.dumps({**config, "sampling": {"guidance_interval": [900, 100]}}))
    one_line_exit_2(dlab("generate", "image", "a circle", "--model", str(bad), "--out", str(tmp_path)),
                    "sampling.guidance_interval")


def test_generate_with_a_model_from_disk(tmp_path, tiny_model_path):
    r = dlab("generate", "image", "a red hexagon", "--model", str(tiny_model_path), "--steps", "3", "--batch", "2",
             "--seed", "5", "--trace", "3", "--guidance-interval", "0:700", "--out", str(tmp_path), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert len(out["images"]) == 2 and out["grid"] and out["trace"]
    assert "hexagon" in r.stderr and out["unknown_words"] == ["hexagon"]
    params = read_png_params(out["images"][0])
    assert params["seed"] == 5 and params["sampler"] == "ddim" and params["steps"] == 3
    assert params["guidance_interval"] == [0, 700]
    assert params["model_hash"] == out["params"]["model_hash"] and len(params["model_hash"]) == 64


@pytest.mark.skipif(not BUILTIN_IMAGE_MODEL.exists(), reason="built-in weights not shipped yet")
def test_builtin_model_same_seed_same_pixels(tmp_path):
    args = ["generate", "image", "a red circle on a black background", "--steps", "10", "--seed", "7",
            "--batch", "2", "--json"]
    a = json.loads(dlab(*args, "--out", str(tmp_path / "a")).stdout)
    b = json.loads(dlab(*args, "--out", str(tmp_path / "b")).stdout)
    for pa, pb in zip(a["images"], b["images"]):
        assert np.array_equal(np.asarray(Image.open(pa)), np.asarray(Image.open(pb)))
    assert a["params"]["model"] == "shapes"


def test_noise_strip(tmp_path):
    src = tmp_path / "in.png"
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(src)
    r = dlab("noise", str(src), "--at", "0,500,999", "--out", str(tmp_path), "--json")
    assert r.returncode == 0, r.stderr
    strip = json.loads(r.stdout)["strip"]
    im = np.asarray(Image.open(strip))
    assert im.shape[1] > im.shape[0] * 2  # three frames side by side
    params = read_png_params(strip)
    assert params["timesteps"] == [0, 500, 999]


@pytest.mark.parametrize("content,at,needle", [
    (b"not an image", "0,10", "not a readable image"), (None, "0,10", "no such file"), (b"", "0,abc", "--at"),
    (b"", "0,1000", "--at"),
])
def test_noise_bad_input(tmp_path, content, at, needle):
    src = tmp_path / "in.png"
    if content is not None:
        if content:
            src.write_bytes(content)
        else:
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(src)
    one_line_exit_2(dlab("noise", str(src), "--at", at, "--out", str(tmp_path)), needle)


def test_train_a_few_steps_writes_a_loadable_model(tmp_path):
    r = dlab("train", "image", "--steps", "3", "--batch", "4", "--out", str(tmp_path), "--no-evaluate",
             "--aux-layout-weight", "0.05")
    assert r.returncode == 0, r.stderr
    for name in ("shapes.safetensors", "shapes.json", "shapes.md"):
        assert (tmp_path / name).exists()
    cfg = json.loads((tmp_path / "shapes.json").read_text())
    assert cfg["steps"] == 3 and cfg["seed"] == 0 and cfg["training"]["aux_layout_weight"] == 0.05
    card = (tmp_path / "shapes.md").read_text()
    assert "## Training" in card and "layout loss" in card
    assert "--steps 3 --seed 0 --batch 4 --precision fp32 --snr-gamma 5 --aux-layout-weight 0.05`" in card
    assert cfg["sampling"] == {"guidance_interval": [0, 700]} and "## Sampling" in card
    # The model's recommended interval applies unless the user names one; `all` guides every step.
    for extra, interval in (([], [0, 700]), (["--guidance-interval", "all"], None),
                            (["--guidance-interval", "100:900"], [100, 900])):
        g = dlab("generate", "image", "a circle", "--model", str(tmp_path / "shapes.safetensors"), "--steps", "2",
                 "--seed", "1", "--out", str(tmp_path / "out"), "--json", *extra)
        assert g.returncode == 0, g.stderr
        assert read_png_params(json.loads(g.stdout)["images"][0])["guidance_interval"] == interval


def test_train_bad_input():
    one_line_exit_2(dlab("train", "image"), "--minutes")
    one_line_exit_2(dlab("train", "image", "--steps", "0"), "--steps")
    one_line_exit_2(dlab("train", "image", "--steps", "3", "--aux-layout-weight", "-1"), "--aux-layout-weight")


# ------------------------------------------------------------------------------------ the plan decides
def test_generate_without_settings_follows_the_plan(tmp_path, tiny_model_path):
    from dlab.planner.plan import load_bench, make_plan
    from dlab.planner.probe import take_snapshot

    plan = make_plan("shapes", take_snapshot(), bench=load_bench())
    r = dlab("generate", "image", "a red circle", "--model", str(tiny_model_path), "--steps", "2", "--seed", "1",
             "--out", str(tmp_path), "--json")
    assert r.returncode == 0, r.stderr
    params = json.loads(r.stdout)["params"]
    assert params["batch"] == plan.batch and params["precision"] == plan.precision
    assert params["device"] == ("cpu" if plan.device == "cpu" else "cuda:0")
    assert params["backend"] == {"eager": "eager", "onnx": "onnxruntime"}[plan.backend]


def test_settings_the_plan_refuses_need_force(tmp_path, tiny_model_path, monkeypatch):
    from typer.testing import CliRunner

    from dlab.cli import app
    from dlab.errors import DlabError
    from dlab.planner import probe
    from dlab.planner.snapshot import load_snapshot
    from dlab.profiles import example_machines

    snap = load_snapshot(example_machines()["cpu_laptop"])
    tight = snap.model_copy(update={"memory": snap.memory.model_copy(update={"available_bytes": int(0.5 * 2**30)})})
    monkeypatch.setattr(probe, "take_snapshot", lambda *a, **k: tight)
    args = ["generate", "image", "a red circle", "--model", str(tiny_model_path), "--steps", "2", "--out", str(tmp_path)]
    r = CliRunner().invoke(app, [*args, "--batch", "256"])
    assert isinstance(r.exception, DlabError) and "will not fit" in str(r.exception) and "nearest that fits" in str(r.exception)
    r = CliRunner().invoke(app, [*args, "--batch", "256", "--force", "--json"])
    assert r.exit_code == 0, r.output
