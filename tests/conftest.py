from __future__ import annotations

import pytest

from dlab.planner.snapshot import HardwareSnapshot, load_snapshot
from dlab.profiles import example_machines


@pytest.fixture
def machine():
    """Load an example snapshot by name; each call returns a fresh copy to modify."""

    def _load(name: str) -> HardwareSnapshot:
        return load_snapshot(example_machines()[name])

    return _load


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory):
    """A tiny, untrained (random but non-zero output) shapes-format model saved with the real writer."""
    import torch

    from dlab.runtime import shapes
    from dlab.runtime.nets.text import TextEncoder, TextEncoderConfig, Tokenizer
    from dlab.runtime.nets.unet import UNet, UNetConfig
    from dlab.runtime.train import save_image_model

    torch.manual_seed(0)
    tok = Tokenizer.from_words(shapes.VOCAB)
    text = TextEncoder(TextEncoderConfig(vocab_size=len(tok), dim=16, layers=1, heads=2))
    unet = UNet(UNetConfig(base_channels=8, channel_mult=(1, 2), attention_resolutions=(8,), heads=2,
                           context_dim=16, time_embed_dim=16, groups=4))
    torch.nn.init.normal_(unet.conv_out.weight, std=0.05)
    out = tmp_path_factory.mktemp("tiny")
    weights, _ = save_image_model(out, unet, text, tok, {"kind": "cosine", "num_train_timesteps": 1000,
                                                         "prediction_type": "v_prediction"}, {"steps": 0})
    return weights
