"""The model card: evaluations merge by config name in the card's order, and every row says how it guided."""

from __future__ import annotations

import json
import shutil

from dlab.runtime.model_card import EVAL_CONFIGS, record_evaluation, write_card


def row(name: str, accuracy: float, interval=None) -> dict:
    c = next(c for c in EVAL_CONFIGS if c.name == name)
    return {
        "name": name, "sampler": c.sampler, "steps": c.steps, "guidance": c.guidance, "guidance_interval": interval,
        "prompts": 36, "seeds": c.seeds, "accuracy": accuracy, "per_attribute": {"size": accuracy},
        "images_per_s": 2.0, "seconds": 1.0, "failures": [], "prompt_set": c.prompt_set, "backend": "onnxruntime",
    }


def test_record_merges_by_name_and_the_card_shows_the_interval(tmp_path, tiny_model_path):
    weights = tmp_path / "m.safetensors"
    shutil.copy(tiny_model_path, weights)
    shutil.copy(tiny_model_path.with_suffix(".json"), weights.with_suffix(".json"))
    interval_cfg = next(c for c in EVAL_CONFIGS if c.guidance_interval)
    record_evaluation(weights, [row(interval_cfg.name, 0.5, list(interval_cfg.guidance_interval))])
    record_evaluation(weights, [row("ddim50-g3-size", 0.7)])
    record_evaluation(weights, [row(interval_cfg.name, 0.9, list(interval_cfg.guidance_interval))])  # replaces 0.5
    evaluation = json.loads(weights.with_suffix(".json").read_text())["evaluation"]
    assert [e["name"] for e in evaluation] == ["ddim50-g3-size", interval_cfg.name]  # EVAL_CONFIGS order
    assert [e["accuracy"] for e in evaluation] == [0.7, 0.9]
    card = write_card(weights).read_text()
    lo, hi = interval_cfg.guidance_interval
    interval_line = next(ln for ln in card.splitlines() if ln.startswith(f"| {interval_cfg.name} |"))
    assert f"| 3 on {lo} ≤ t < {hi} |" in interval_line and "**90.0%**" in interval_line
    plain_line = next(ln for ln in card.splitlines() if ln.startswith("| ddim50-g3-size |"))
    assert "| 3 |" in plain_line and "**70.0%**" in plain_line
