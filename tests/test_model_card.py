"""The model card: evaluations merge by config name in the card's order, and every row says how it guided."""

from __future__ import annotations

import json
import shutil

from dlab.runtime.model_card import EVAL_CONFIGS, MODEL_DEFAULT, record_evaluation, write_card


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
    config = json.loads(tiny_model_path.with_suffix(".json").read_text())
    weights.with_suffix(".json").write_text(json.dumps({**config, "sampling": {"guidance_interval": [0, 700]}}))
    assert next(c for c in EVAL_CONFIGS if c.name == "ddim50-g3-size").guidance_interval == MODEL_DEFAULT
    every = next(c for c in EVAL_CONFIGS if c.guidance_interval is None and c.guidance != 1)
    record_evaluation(weights, [row("ddim50-g3-size", 0.5, [0, 700])])
    record_evaluation(weights, [row(every.name, 0.7)])
    record_evaluation(weights, [row("ddim50-g3-size", 0.9, [0, 700])])  # replaces 0.5
    evaluation = json.loads(weights.with_suffix(".json").read_text())["evaluation"]
    assert [e["name"] for e in evaluation] == ["ddim50-g3-size", every.name]  # EVAL_CONFIGS order
    assert [e["accuracy"] for e in evaluation] == [0.9, 0.7]
    card = write_card(weights).read_text()
    interval_line = next(ln for ln in card.splitlines() if ln.startswith("| ddim50-g3-size |"))
    assert "| 3 on 0 ≤ t < 700 |" in interval_line and "**90.0%**" in interval_line
    plain_line = next(ln for ln in card.splitlines() if ln.startswith(f"| {every.name} |"))
    assert "| 3 |" in plain_line and "**70.0%**" in plain_line
    assert "## Sampling" in card and "only on timesteps 0 ≤ t < 700" in card


def test_card_rows_use_the_model_recommendation(tiny_model_path):
    """A MODEL_DEFAULT row runs with the model's recommended interval; an explicit None guides every step."""
    from dlab.runtime.backends import EagerBackend
    from dlab.runtime.image import ImageModel
    from dlab.runtime.model_card import evaluate_config

    model = ImageModel.load(tiny_model_path)
    model.config["sampling"] = {"guidance_interval": [0, 600]}
    backend = EagerBackend(model.unet)
    recorded = []
    for name in ("ddim50-g3-size", "ddim50-g3-every-size"):
        c = next(c for c in EVAL_CONFIGS if c.name == name)._replace(steps=2, seeds=1)
        recorded.append(evaluate_config(model, backend, c)["guidance_interval"])
    assert [tuple(r) if r else r for r in recorded] == [(0, 600), None]


def test_card_run_does_not_rerun_a_row_with_the_same_settings(tiny_model_path, tmp_path, monkeypatch):
    """For a model that recommends no interval, the every-step row equals the default row: it is copied
    under its own name, not sampled again; with a recommendation both rows run."""
    from dlab.runtime import model_card

    small = [c._replace(steps=2, seeds=1) for c in EVAL_CONFIGS if c.name in ("ddim50-g3-size", "ddim50-g3-every-size")]
    monkeypatch.setattr(model_card, "EVAL_CONFIGS", small)
    calls = []
    real = model_card.evaluate_config
    monkeypatch.setattr(model_card, "evaluate_config", lambda m, b, c: calls.append(c.name) or real(m, b, c))

    log: list[str] = []
    rows = model_card.run_card_evaluation(tiny_model_path, log=log.append)
    assert calls == ["ddim50-g3-size"]
    assert [r["name"] for r in rows] == ["ddim50-g3-size", "ddim50-g3-every-size"]
    assert rows[1]["accuracy"] == rows[0]["accuracy"] and rows[1]["guidance_interval"] is None
    assert "not rerun" in log[1]

    weights = tmp_path / "m.safetensors"
    shutil.copy(tiny_model_path, weights)
    config = json.loads(tiny_model_path.with_suffix(".json").read_text())
    weights.with_suffix(".json").write_text(json.dumps({**config, "sampling": {"guidance_interval": [0, 600]}}))
    calls.clear()
    rows = model_card.run_card_evaluation(weights, log=log.append)
    assert calls == ["ddim50-g3-size", "ddim50-g3-every-size"]
    assert [tuple(r["guidance_interval"]) if r["guidance_interval"] else None for r in rows] == [(0, 600), None]
