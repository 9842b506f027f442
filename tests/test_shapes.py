"""The "shapes" data set: geometry, colours, anti-aliasing, captions and prompt parsing."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from dlab.runtime.shapes import (
    BACKGROUNDS,
    COLOURS,
    IMAGE_SIZE,
    SHAPES,
    SIZE_RANGE,
    SIZES,
    VOCAB,
    Prompt,
    ShapeSpec,
    caption,
    make_batch,
    parse_prompt,
    prompt_grid,
    random_specs,
    render,
)


@pytest.fixture(scope="module")
def batch() -> tuple[list[ShapeSpec], np.ndarray]:
    specs = random_specs(np.random.default_rng(1234), 600)
    return specs, render(specs)


def coverage(spec: ShapeSpec, image: np.ndarray) -> np.ndarray:
    """Per-pixel coverage recovered from the rendered colours (exact up to uint8 rounding)."""
    fill, bg = np.array(spec.fill_rgb, float), np.array(spec.bg_rgb, float)
    d = fill - bg
    return (image.astype(float) - bg) @ d / (d @ d)


def test_api_constants():
    assert IMAGE_SIZE == 32
    assert SHAPES == ("circle", "square", "triangle")
    assert COLOURS == {
        "red": (220, 40, 40),
        "green": (40, 180, 60),
        "blue": (40, 80, 220),
        "yellow": (235, 210, 40),
        "purple": (150, 60, 200),
        "orange": (245, 140, 30),
    }
    assert BACKGROUNDS == {"black": (15, 15, 15), "white": (240, 240, 240), "gray": (128, 128, 128)}
    assert SIZES == {"small": (0.30, 0.45), "large": (0.55, 0.70)}
    assert SIZE_RANGE == (0.30, 0.70)
    assert VOCAB == tuple(
        "circle square triangle red green blue yellow purple orange black white gray "
        "small large a an on the background".split()
    )


def test_make_batch_shapes_and_types():
    images, captions, specs = make_batch(np.random.default_rng(0), 64)
    assert images.shape == (64, 32, 32, 3) and images.dtype == np.uint8
    assert len(captions) == len(specs) == 64
    assert all(isinstance(c, str) for c in captions)


def test_specs_within_spec(batch):
    specs, _ = batch
    for s in specs:
        assert s.shape in SHAPES and s.colour in COLOURS and s.background in BACKGROUNDS
        assert SIZE_RANGE[0] <= s.size <= SIZE_RANGE[1]
        half = s.size * IMAGE_SIZE / 2
        assert half <= s.cx <= IMAGE_SIZE - half and half <= s.cy <= IMAGE_SIZE - half
        assert np.all(np.abs(np.subtract(s.fill_rgb, COLOURS[s.colour])) <= 12)
        assert np.all(np.abs(np.subtract(s.bg_rgb, BACKGROUNDS[s.background])) <= 12)
        assert s.size_word == ("small" if s.size <= 0.45 else "large" if s.size >= 0.55 else None)
    # every value is drawn: all shapes, colours, backgrounds and all three size bands occur
    assert {s.shape for s in specs} == set(SHAPES)
    assert {s.colour for s in specs} == set(COLOURS)
    assert {s.background for s in specs} == set(BACKGROUNDS)
    assert {s.size_word for s in specs} == {"small", "large", None}
    # fill and background jitter independently
    assert len({s.fill_rgb for s in specs if s.colour == "red"}) > 20


def test_constraints():
    rng = np.random.default_rng(7)
    for size, (lo, hi) in SIZES.items():
        specs = random_specs(rng, 200, shape="triangle", colour="orange", background="gray", size=size)
        assert all(s.shape == "triangle" and s.colour == "orange" and s.background == "gray" for s in specs)
        assert all(lo <= s.size <= hi and s.size_word == size for s in specs)
    with pytest.raises(ValueError):
        random_specs(rng, 1, shape="hexagon")
    with pytest.raises(ValueError):
        random_specs(rng, 1, size="medium")


def test_centre_is_fill_and_border_is_background(batch):
    specs, images = batch
    for s, img in zip(specs, images):
        # The triangle's centroid sits s/6 below the box centre; its box centre lies near the apex side.
        cy = s.cy + (s.size * IMAGE_SIZE / 6 if s.shape == "triangle" else 0)
        centre = img[int(cy), int(s.cx)]
        assert np.all(np.abs(centre.astype(int) - s.fill_rgb) <= 1), s
        # The whole border ring (corners included) is pure background: the shape is fully inside.
        ring = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
        assert np.all(ring == s.bg_rgb), s


def test_area_and_extent_match_geometry(batch):
    specs, images = batch
    factor = {"circle": math.pi / 4, "square": 1.0, "triangle": 0.5}
    for s, img in zip(specs, images):
        a = coverage(s, img)
        side = s.size * IMAGE_SIZE
        assert a.sum() == pytest.approx(factor[s.shape] * side**2, rel=0.03, abs=1.0), s
        rows = np.flatnonzero(a.max(axis=1) > 0.02)
        cols = np.flatnonzero(a.max(axis=0) > 0.02)
        # the pixels touched span the s×s box centred on (cx, cy), to within a pixel
        assert cols.min() >= math.floor(s.cx - side / 2) - 1 and cols.max() <= math.ceil(s.cx + side / 2)
        assert rows.min() >= math.floor(s.cy - side / 2) - 1 and rows.max() <= math.ceil(s.cy + side / 2)
        assert rows.max() - rows.min() + 1 >= side - 1 and cols.max() - cols.min() + 1 >= side - 1


def test_triangle_points_up_and_square_is_flat(batch):
    specs, images = batch
    for s, img in zip(specs, images):
        a = coverage(s, img)
        row_mass = a.sum(axis=1)
        rows = np.flatnonzero(row_mass > 0.5)
        top, bottom = row_mass[rows[1]], row_mass[rows[-2]]
        if s.shape == "triangle":
            assert top < 0.5 * bottom, s
        elif s.shape == "square":
            assert top == pytest.approx(bottom, rel=0.05), s


def test_edges_are_anti_aliased(batch):
    specs, images = batch
    for s, img in zip(specs, images):
        a = coverage(s, img)
        partial = (a > 0.03) & (a < 0.97)
        assert partial.sum() >= 4, s
        # Only background, fill, and mixes of the two: nothing outside the segment bg→fill.
        assert a.min() > -0.05 and a.max() < 1.05


def test_render_scales_with_image_size():
    specs = random_specs(np.random.default_rng(3), 8)
    small, big = render(specs), render(specs, image_size=64)
    assert big.shape == (8, 64, 64, 3)
    down = big.reshape(8, 32, 2, 32, 2, 3).astype(float).mean(axis=(2, 4))
    assert np.abs(down - small).mean() < 1.0


def test_deterministic_for_a_seed():
    a = make_batch(np.random.default_rng(42), 32)
    b = make_batch(np.random.default_rng(42), 32)
    c = make_batch(np.random.default_rng(43), 32)
    assert np.array_equal(a[0], b[0]) and a[1] == b[1] and a[2] == b[2]
    assert not np.array_equal(a[0], c[0])


def test_captions_use_vocab_and_describe_the_image():
    rng = np.random.default_rng(5)
    specs = random_specs(rng, 3000)
    captions = [caption(s, rng) for s in specs]
    named = {"shape": 0, "colour": 0, "background": 0, "size": 0}
    for s, text in zip(specs, captions):
        words = text.split()
        assert words, "empty caption"
        assert set(words) <= set(VOCAB), text
        for i, w in enumerate(words[:-1]):
            if w in ("a", "an"):  # the article agrees with the next word
                assert (w == "an") == (words[i + 1] == "orange"), text
        p = parse_prompt(text)
        assert p.unknown == (), text
        assert p.shape in (None, s.shape) and p.colour in (None, s.colour)
        assert p.background in (None, s.background)
        assert p.size in (None, s.size_word), text  # size words only for small / large
        if s.size_word is None:
            assert p.size is None
        for attr in named:
            named[attr] += getattr(p, attr) is not None
    n = len(specs)
    # each attribute is sometimes named and sometimes left out (size only exists for 3/4 of images)
    assert 0.82 < named["shape"] / n < 0.97
    assert 0.72 < named["colour"] / n < 0.88
    assert 0.62 < named["background"] / n < 0.78
    assert 0.40 < named["size"] / n < 0.65
    phrasing = set(captions)
    assert any(c.startswith("a ") for c in phrasing) and any(c.startswith("an orange") for c in phrasing)
    assert any(" on a " in c for c in phrasing) and any(" on the " in c for c in phrasing)
    assert any(re.search(r"\bon (black|white|gray) background", c) for c in phrasing)
    assert any(c in SHAPES for c in phrasing)  # a bare "circle"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a small red circle on a gray background", Prompt("circle", "red", "gray", "small", ())),
        ("a blue square", Prompt("square", "blue", None, None, ())),
        ("yellow triangle on black background", Prompt("triangle", "yellow", "black", None, ())),
        ("a large circle", Prompt("circle", None, None, "large", ())),
        ("circle", Prompt("circle", None, None, None, ())),
        ("a red hexagon", Prompt(None, "red", None, None, ("hexagon",))),
        ("A Purple Triangle, on the GREY background!", Prompt("triangle", "purple", "gray", None, ())),
        ("white background with a green square", Prompt("square", "green", "white", None, ("with",))),
        ("on the white a green square", Prompt("square", "green", "white", None, ())),
        ("a black circle", Prompt("circle", None, None, None, ("black",))),
        ("a red circle on a blue background", Prompt("circle", "red", None, None, ("blue",))),
        ("a medium circle", Prompt("circle", None, None, None, ("medium",))),
        ("", Prompt(None, None, None, None, ())),
    ],
)
def test_parse_prompt(text, expected):
    assert parse_prompt(text) == expected


def test_prompt_grid():
    plain, sized = prompt_grid(False), prompt_grid(True)
    assert len(plain) == len(set(plain)) == 54
    assert len(sized) == len(set(sized)) == 36
    assert "a red circle on a black background" in plain
    assert "an orange square on a white background" in plain
    assert "a small red circle" in sized
    for text in plain:
        p = parse_prompt(text)
        assert p.unknown == () and None not in (p.shape, p.colour, p.background) and p.size is None
    for text in sized:
        p = parse_prompt(text)
        assert p.unknown == () and None not in (p.shape, p.colour, p.size) and p.background is None
    assert {(parse_prompt(t).shape, parse_prompt(t).colour, parse_prompt(t).background) for t in plain} == {
        (s, c, b) for s in SHAPES for c in COLOURS for b in BACKGROUNDS
    }
