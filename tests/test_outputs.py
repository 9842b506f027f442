from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from dlab.errors import BadInput
from dlab.runtime import outputs


def test_png_written_atomically_with_parameters(tmp_path):
    img = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    params = {"prompt": "a red circle", "seed": 7, "sampler": "ddim", "steps": 50}
    path = outputs.write_png(tmp_path / "x.png", img, params)
    assert outputs.read_png_params(path) == params
    with Image.open(path) as im:
        assert np.array_equal(np.asarray(im), img)
        assert "seed: 7" in im.text["parameters"]
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]  # no temp files left behind


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "y.png"
    target.write_bytes(b"old")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        outputs.atomic_write_bytes(target, b"new contents")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["y.png"]


def test_grid_layout():
    imgs = np.stack([np.full((4, 4, 3), v, np.uint8) for v in (10, 20, 30)])
    g = outputs.make_grid(imgs, cols=3, pad=1)
    assert g.shape == (6, 16, 3)
    assert g[1, 1, 0] == 10 and g[1, 6, 0] == 20 and g[1, 11, 0] == 30 and g[0, 0, 0] == 40
    assert outputs.make_grid(imgs, cols=3, pad=1, scale=2).shape == (12, 32, 3)


def test_unwritable_out_dir(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(BadInput, match="not a folder"):
        outputs.ensure_writable_dir(f)
    if os.geteuid() != 0:  # root can write anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        with pytest.raises(BadInput, match="not writable"):
            outputs.ensure_writable_dir(ro / "sub")
    with pytest.raises(BadInput, match="not writable"):
        outputs.ensure_writable_dir(f / "sub")


def test_unique_stem_never_overwrites(tmp_path):
    (tmp_path / "run-00.png").write_bytes(b"")
    assert outputs.unique_stem(tmp_path, "run") == "run-2"
    assert outputs.unique_stem(tmp_path, "other") == "other"


def test_to_uint8_maps_model_range():
    x = np.array([-1.0, 0.0, 1.0, 2.0], dtype=np.float32).reshape(1, 1, 1, 4).repeat(3, axis=1)
    assert outputs.to_uint8(x)[0, 0, :, 0].tolist() == [0, 128, 255, 255]
