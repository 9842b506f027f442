"""The shapes model's networks, its file format and the trainer's reproducibility, on tiny configs."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from dlab.errors import BadFile
from dlab.runtime import shapes
from dlab.runtime.nets.text import PAD, UNK, TextEncoder, TextEncoderConfig, Tokenizer
from dlab.runtime.nets.unet import ResBlock, UNet, UNetConfig
from dlab.runtime.train import (
    TrainConfig,
    _Trainer,
    layout_targets,
    load_image_model,
    save_image_model,
    train_image_model,
)

TINY_UNET = UNetConfig(
    base_channels=8, channel_mult=(1, 2), attention_resolutions=(16,), heads=2, context_dim=16,
    time_embed_dim=16, groups=4,
)


def tiny_models(seed: int = 0):
    torch.manual_seed(seed)
    tok = Tokenizer.from_words(shapes.VOCAB)
    text = TextEncoder(TextEncoderConfig(vocab_size=len(tok), dim=16, layers=1, heads=2))
    unet = UNet(TINY_UNET)
    # The output conv starts at zero (eps = 0 whatever the input); give it weights so outputs differ.
    torch.nn.init.normal_(unet.conv_out.weight, std=0.1)
    return tok, text.eval(), unet.eval()


def run(tok, text, unet, prompts, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(prompts), 3, 32, 32, generator=g)
    t = torch.full((len(prompts),), 500)
    enc = tok.encode(prompts)
    with torch.no_grad():
        ctx, mask = text(enc.ids, enc.mask)
        return unet(x, t, ctx, mask)


def test_tokenizer_round_trip_and_unknown_words():
    tok = Tokenizer.from_words(shapes.VOCAB)
    assert tok.vocab[:2] == [PAD, UNK] and len(tok) == len(shapes.VOCAB) + 2
    ids, mask, unknown = tok.encode(["A small, RED circle on a gray background!", "a purplish blob"])
    assert ids.shape == mask.shape == (2, 12) and ids.dtype == torch.long and mask.dtype == torch.bool
    assert tok.decode(ids) == ["a small red circle on a gray background", "a <unk> <unk>"]
    assert unknown == ((), ("purplish", "blob"))
    assert mask[0].sum() == 8 and mask[1].sum() == 3
    assert Tokenizer.from_list(json.loads(json.dumps(tok.to_list()))).vocab == tok.vocab


def test_tokenizer_empty_prompt_is_all_pad_and_long_prompts_truncate():
    tok = Tokenizer.from_words(shapes.VOCAB)
    ids, mask, unknown = tok.encode(["", " ".join(["red"] * 20)])
    assert (ids[0] == 0).all() and not mask[0].any() and unknown[0] == ()
    assert mask[1].all()


def test_text_encoder_shapes_and_empty_prompt_is_finite():
    tok, text, _ = tiny_models()
    enc = tok.encode(["", "a red circle"])
    ctx, mask = text(enc.ids, enc.mask)
    assert ctx.shape == (2, 13, 16) and mask.shape == (2, 13)
    assert mask[:, 0].all() and mask[0].sum() == 1  # the <null> slot is the empty prompt's only key
    assert torch.isfinite(ctx).all()


def test_fresh_text_encoder_tells_colour_words_apart():
    """At initialisation a changed colour word must move its slot of the context by a sizeable share of
    its norm (a 0.02-std embedding moved it by ~1 %, and training never separated the colours)."""
    torch.manual_seed(0)
    tok = Tokenizer.from_words(shapes.VOCAB)
    text = TextEncoder(TextEncoderConfig(vocab_size=len(tok), dim=128, layers=2, heads=4)).eval()
    enc = tok.encode(["a large red square", "a large green square"])
    with torch.no_grad():
        ctx, _ = text(enc.ids, enc.mask)
    slot = 3  # <null> a large [colour]
    assert (ctx[0, slot] - ctx[1, slot]).norm() > 0.5 * ctx[0, slot].norm()


def test_unet_output_shape_and_zero_init():
    tok, text, unet = tiny_models()
    out = run(tok, text, unet, ["a red circle", ""])
    assert out.shape == (2, 3, 32, 32) and torch.isfinite(out).all()
    fresh = UNet(TINY_UNET)
    enc = tok.encode(["a red circle"])
    ctx, mask = text(enc.ids, enc.mask)
    assert not fresh(torch.randn(1, 3, 32, 32), torch.tensor([10]), ctx, mask).any()


def test_unet_output_depends_on_the_prompt():
    tok, text, unet = tiny_models()
    a = run(tok, text, unet, ["a red circle on a white background"])
    b = run(tok, text, unet, ["a blue square on a black background"])
    c = run(tok, text, unet, [""])
    assert not torch.allclose(a, b) and not torch.allclose(a, c)


def test_padding_does_not_change_the_output():
    """Padding keys are masked: a prompt gives the same output whatever sits in its pad slots."""
    tok, text, unet = tiny_models()
    enc = tok.encode(["a red circle"])
    ids2 = enc.ids.clone()
    ids2[0, 5:] = 7  # garbage behind the mask
    with torch.no_grad():
        c1, m1 = text(enc.ids, enc.mask)
        c2, m2 = text(ids2, enc.mask)
        x, t = torch.randn(1, 3, 32, 32), torch.tensor([300])
        torch.testing.assert_close(unet(x, t, c1, m1), unet(x, t, c2, m2))


def test_scale_shift_gates_the_block_multiplicatively():
    """With scale-shift conditioning an embedding that sets scale = −1, shift = 0 silences the block's
    conv path (norm(h)·0), so the block returns its input plus conv2's bias whatever x is; an added
    bias (the legacy block) cannot do that."""
    torch.manual_seed(0)
    block = ResBlock(8, 8, temb=4, groups=4, dropout=0.0, scale_shift=True).eval()
    assert block.temb.out_features == 16
    with torch.no_grad():
        block.temb.weight.zero_()
        block.temb.bias.copy_(torch.cat([-torch.ones(8), torch.zeros(8)]))
        x = torch.randn(2, 8, 6, 6)
        expected = x + block.conv2(torch.zeros(1, 8, 6, 6))
        torch.testing.assert_close(block(x, torch.randn(2, 4)), expected)
        legacy = ResBlock(8, 8, temb=4, groups=4, dropout=0.0)
        assert legacy.temb.out_features == 8


def test_config_without_new_keys_loads_the_legacy_net(tmp_path):
    """A model file written before `pooled_text` / `scale_shift` existed loads as the net it was."""
    tok, text, unet = tiny_models()
    legacy = UNet(TINY_UNET.model_copy(update={"pooled_text": False, "scale_shift": False}))
    weights, config_path = save_image_model(tmp_path, legacy, text, tok, {"kind": "cosine", "num_train_timesteps": 1000})
    record = json.loads(config_path.read_text())
    del record["unet"]["pooled_text"], record["unet"]["scale_shift"]
    config_path.write_text(json.dumps(record))
    unet2, *_ = load_image_model(weights)
    assert not unet2.config.scale_shift and not unet2.config.pooled_text
    assert unet2.text_to_time is None and unet2.mid_res.temb.out_features == legacy.mid_res.temb.out_features


def save_tiny(tmp_path):
    tok, text, unet = tiny_models()
    weights, _ = save_image_model(tmp_path, unet, text, tok, {"kind": "cosine", "num_train_timesteps": 1000})
    return weights, (tok, text, unet)


def test_save_load_round_trip_is_bit_identical(tmp_path):
    weights, (tok, text, unet) = save_tiny(tmp_path)
    unet2, text2, tok2, config = load_image_model(weights)
    assert tok2.vocab == tok.vocab and config["schedule"]["kind"] == "cosine"
    prompts = ["a small red circle", ""]
    assert torch.equal(run(tok, text, unet, prompts), run(tok2, text2, unet2, prompts))


def test_missing_or_corrupt_files_raise_bad_file(tmp_path):
    weights, _ = save_tiny(tmp_path)
    with pytest.raises(BadFile, match="no such model file"):
        load_image_model(tmp_path / "nothing.safetensors")

    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadFile, match="shapes.safetensors"):
        load_image_model(weights)
    weights.write_bytes(b"\x00" * 64)
    with pytest.raises(BadFile, match="not a readable safetensors"):
        load_image_model(weights)

    weights.write_bytes(data)
    state = load_file(str(weights))
    del state["unet.conv_out.weight"]
    save_file(state, str(weights))
    with pytest.raises(BadFile, match="missing tensor unet.conv_out.weight"):
        load_image_model(weights)

    state["unet.conv_out.weight"] = torch.zeros(1)
    save_file(state, str(weights))
    with pytest.raises(BadFile, match="has shape"):
        load_image_model(weights)

    weights.write_bytes(data)
    weights.with_suffix(".json").write_text("{not json")
    with pytest.raises(BadFile, match="shapes.json"):
        load_image_model(weights)
    weights.with_suffix(".json").unlink()
    with pytest.raises(BadFile, match="shapes.json"):
        load_image_model(weights)


def test_training_is_reproducible(tmp_path):
    cfg = TrainConfig(
        seed=3, batch_size=4, max_steps=3, warmup_steps=1, unet=TINY_UNET, text_layers=1, text_heads=2,
    )
    seen = []
    results = [
        train_image_model(cfg, tmp_path / name, progress=lambda *a: seen.append(a)) for name in ("a", "b")
    ]
    assert [s[0] for s in seen] == [1, 2, 3, 1, 2, 3] and all(s[1] == 3 for s in seen)
    a, b = (load_file(str(r.weights)) for r in results)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert results[0].final_loss == results[1].final_loss and results[0].steps == 3
    record = json.loads(results[0].config.read_text())
    assert record["steps"] == 3 and record["seed"] == 3 and record["weights"] == "ema"
    load_image_model(results[0].weights)  # what training writes, loading accepts


def test_layout_targets_are_scaled_size_and_centre():
    spec = shapes.ShapeSpec("circle", "red", "black", 0.615, 21.0, 11.0, (220, 40, 40), (15, 15, 15))
    centred = shapes.ShapeSpec("square", "red", "black", 0.5, 16.0, 16.0, (220, 40, 40), (15, 15, 15))
    got = layout_targets([spec, centred])
    assert torch.allclose(got, torch.tensor([[1.0, 1.0, -1.0], [0.0, 0.0, 0.0]]), atol=1e-6)


def test_aux_layout_loss_reaches_the_encoder_only_and_is_not_saved(tmp_path):
    """The layout head reads the bottleneck: its loss adds gradient to the encoder half and nothing to the
    decoder's output conv; the head is thrown away, so the saved file has the same tensors as without it."""
    base = dict(seed=5, batch_size=4, max_steps=2, warmup_steps=1, unet=TINY_UNET, text_layers=1, text_heads=2)
    plain, aux = _Trainer(TrainConfig(**base), 2), _Trainer(TrainConfig(**base, aux_layout_weight=0.5), 2)
    batch = plain.batch()
    assert torch.equal(batch[0], aux.batch()[0])
    torch.nn.init.normal_(plain.unet.conv_out.weight, std=0.1)  # so the decoder's gradient is not 0
    with torch.no_grad():
        aux.unet.conv_out.weight.copy_(plain.unet.conv_out.weight)
    losses = []
    for trainer in (plain, aux):
        loss = trainer.loss(*batch)
        loss.backward()
        losses.append(float(loss.detach()))
    assert losses[1] > losses[0]  # the same denoising loss plus λ · a mean square
    assert torch.equal(plain.unet.conv_out.weight.grad, aux.unet.conv_out.weight.grad)
    first = aux.unet.conv_in.weight.grad
    assert not torch.allclose(plain.unet.conv_in.weight.grad, first)
    assert all(p.grad is not None for p in aux.aux_head.parameters())

    saved = [
        load_file(str(train_image_model(TrainConfig(**base, aux_layout_weight=w), tmp_path / str(w)).weights))
        for w in (0.0, 0.5)
    ]
    assert saved[0].keys() == saved[1].keys()
    assert any(not torch.equal(saved[0][k], saved[1][k]) for k in saved[0] if k.startswith("unet.down"))
