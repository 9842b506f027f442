"""The procedural captioned data set "shapes": one flat shape on a flat background, 32×32 RGB.

Every image is drawn from a `ShapeSpec` (shape, fill colour, background, size, centre), so a data set
needs no download and the evaluator (`dlab.runtime.evaluate`) can check a generated image against
the prompt that asked for it.

Geometry, in pixels of an `IMAGE_SIZE` image, with s = size · IMAGE_SIZE:

- circle: diameter s, centred on (cx, cy);
- square: side s, axis-aligned, centred on (cx, cy);
- triangle: upright isoceles, base s and height s, apex at (cx, cy − s/2), base on y = cy + s/2.

So every shape has an s×s bounding box centred on (cx, cy), and the area is s²·k with
k = π/4, 1, 1/2. The bounding box keeps one pixel of background on every side, so the image border
is always pure background.

Edges are anti-aliased: a pixel's value is bg + coverage · (fill − bg), where coverage is the
fraction of the pixel inside the shape: exact for the square (separable), from a 4×4 supersample
grid box-averaged for the circle and triangle.

Captions read `[a|an] [small|large] [colour] shape [on (a|the) X background]`, each attribute kept
with a probability (`KEEP`), never empty: the empty prompt belongs to the unconditional branch that
the trainer builds itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

IMAGE_SIZE = 32
SHAPES = ("circle", "square", "triangle")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (150, 60, 200),
    "orange": (245, 140, 30),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (15, 15, 15),
    "white": (240, 240, 240),
    "gray": (128, 128, 128),
}
SIZES = {"small": (0.30, 0.45), "large": (0.55, 0.70)}
SIZE_RANGE = (0.30, 0.70)
VOCAB: tuple[str, ...] = (
    *SHAPES,
    *COLOURS,
    *BACKGROUNDS,
    "small",
    "large",
    "a",
    "an",
    "on",
    "the",
    "background",
)

JITTER = 12  # ± per channel, drawn independently for the fill and the background
SUPERSAMPLE = 4  # sub-pixel grid per axis used for anti-aliasing
MARGIN = 1.0  # pixels of pure background kept between the bounding box and the image border
# Probability that a caption names each attribute (the shape is dropped rarely: it is the subject).
KEEP = {"shape": 0.9, "colour": 0.8, "background": 0.7, "size": 0.7}
SYNONYMS = {"grey": "gray"}

_WORD = re.compile(r"[a-z0-9]+")  # same split as dlab.runtime.nets.text.split_words


@dataclass(frozen=True)
class ShapeSpec:
    """One image: what is drawn, where, and the exact (jittered) colours used."""

    shape: str
    colour: str
    background: str
    size: float  # side / diameter as a fraction of the image side
    cx: float  # centre, in pixels of an IMAGE_SIZE image
    cy: float
    fill_rgb: tuple[int, int, int]
    bg_rgb: tuple[int, int, int]

    @property
    def size_word(self) -> str | None:
        """"small" or "large", or None for the medium band that captions never name."""
        for word, (lo, hi) in SIZES.items():
            if lo <= self.size <= hi:
                return word
        return None


def _choose(rng: np.random.Generator, names: tuple[str, ...], fixed: str | None, n: int, what: str) -> np.ndarray:
    if fixed is None:
        return rng.integers(0, len(names), n)
    if fixed not in names:
        raise ValueError(f"unknown {what} {fixed!r}; expected one of {', '.join(names)}")
    return np.full(n, names.index(fixed))


def random_specs(
    rng: np.random.Generator,
    n: int,
    *,
    shape: str | None = None,
    colour: str | None = None,
    background: str | None = None,
    size: str | None = None,
) -> list[ShapeSpec]:
    """Draw n specs, uniformly over everything not fixed by a constraint.

    `size` is "small", "large" or None (the whole `SIZE_RANGE`, medium included).
    """
    shapes = _choose(rng, SHAPES, shape, n, "shape")
    colours = _choose(rng, tuple(COLOURS), colour, n, "colour")
    backgrounds = _choose(rng, tuple(BACKGROUNDS), background, n, "background")
    if size is None:
        lo, hi = SIZE_RANGE
    elif size in SIZES:
        lo, hi = SIZES[size]
    else:
        raise ValueError(f"unknown size {size!r}; expected one of {', '.join(SIZES)} or None")
    sizes = rng.uniform(lo, hi, n)
    half = sizes * IMAGE_SIZE / 2
    # Uniform centre such that the bounding box stays MARGIN pixels inside the image.
    cxs = half + MARGIN + rng.random(n) * (IMAGE_SIZE - 2 * (half + MARGIN))
    cys = half + MARGIN + rng.random(n) * (IMAGE_SIZE - 2 * (half + MARGIN))
    fill = np.array(list(COLOURS.values()))[colours] + rng.integers(-JITTER, JITTER + 1, (n, 3))
    bg = np.array(list(BACKGROUNDS.values()))[backgrounds] + rng.integers(-JITTER, JITTER + 1, (n, 3))
    fill, bg = np.clip(fill, 0, 255), np.clip(bg, 0, 255)
    colour_names, bg_names = tuple(COLOURS), tuple(BACKGROUNDS)
    return [
        ShapeSpec(
            shape=SHAPES[shapes[i]],
            colour=colour_names[colours[i]],
            background=bg_names[backgrounds[i]],
            size=float(sizes[i]),
            cx=float(cxs[i]),
            cy=float(cys[i]),
            fill_rgb=tuple(int(v) for v in fill[i]),
            bg_rgb=tuple(int(v) for v in bg[i]),
        )
        for i in range(n)
    ]


def _coverage(kind: str, cx: np.ndarray, cy: np.ndarray, half: np.ndarray, image_size: int) -> np.ndarray:
    """Fraction of each pixel covered by the shape, (m, H, W) float32: exact for the square, from a
    4×4 supersample for the circle and triangle."""
    k = SUPERSAMPLE
    sub = (np.arange(image_size * k, dtype=np.float32) + 0.5) / k  # sub-pixel centres, in pixels
    dx = sub[None, :] - cx[:, None]  # (m, W·k)
    dy = sub[None, :] - cy[:, None]  # (m, H·k)
    h = half[:, None]
    m = len(cx)
    if kind == "square":
        # Exact: the box average of a box is separable, the overlap of each pixel with [c − h, c + h].
        edge = np.arange(image_size, dtype=np.float32)[None, :]
        lo_x, hi_x = (cx - half)[:, None], (cx + half)[:, None]
        lo_y, hi_y = (cy - half)[:, None], (cy + half)[:, None]
        cov_x = np.clip(np.minimum(edge + 1, hi_x) - np.maximum(edge, lo_x), 0, 1)
        cov_y = np.clip(np.minimum(edge + 1, hi_y) - np.maximum(edge, lo_y), 0, 1)
        return cov_y[:, :, None] * cov_x[:, None, :]
    if kind == "circle":
        inside = dx[:, None, :] ** 2 + dy[:, :, None] ** 2 <= (h * h)[:, :, None]
    else:  # triangle: apex at dy = −h, base at dy = +h, half-width (dy + h) / 2
        inside = (2 * np.abs(dx)[:, None, :] <= (dy + h)[:, :, None]) & (dy <= h)[:, :, None]
    counts = inside.reshape(m, image_size, k, image_size, k).sum(axis=(2, 4), dtype=np.uint8)
    return counts.astype(np.float32) / (k * k)


def render(specs: list[ShapeSpec], image_size: int = IMAGE_SIZE) -> np.ndarray:
    """Draw specs as uint8 images (n, image_size, image_size, 3), vectorised per shape kind.

    Positions and sizes are scaled from IMAGE_SIZE pixels, so a larger image_size draws the same
    picture at a higher resolution.
    """
    n = len(specs)
    scale = image_size / IMAGE_SIZE
    cx = np.array([s.cx for s in specs], dtype=np.float32) * scale
    cy = np.array([s.cy for s in specs], dtype=np.float32) * scale
    half = np.array([s.size for s in specs], dtype=np.float32) * (image_size / 2)
    kinds = np.array([SHAPES.index(s.shape) for s in specs], dtype=np.int64)
    coverage = np.zeros((n, image_size, image_size), dtype=np.float32)
    for i, kind in enumerate(SHAPES):
        idx = np.flatnonzero(kinds == i)
        if len(idx):
            coverage[idx] = _coverage(kind, cx[idx], cy[idx], half[idx], image_size)
    fill = np.array([s.fill_rgb for s in specs], dtype=np.float32).reshape(n, 1, 1, 3)
    bg = np.array([s.bg_rgb for s in specs], dtype=np.float32).reshape(n, 1, 1, 3)
    images = bg + coverage[..., None] * (fill - bg)
    return np.rint(images).astype(np.uint8)


def _article(next_word: str) -> str:
    return "an" if next_word[0] in "aeiou" else "a"


def caption(spec: ShapeSpec, rng: np.random.Generator) -> str:
    """A random, never empty caption for spec, e.g. "a small red circle on a gray background"."""
    while True:
        keep = rng.random(4) < (KEEP["shape"], KEEP["colour"], KEEP["background"], KEEP["size"])
        if keep.any():
            break
    keep_shape, keep_colour, keep_bg, keep_size = keep
    words = []
    if keep_size and spec.size_word is not None:
        words.append(spec.size_word)
    if keep_colour:
        words.append(spec.colour)
    if keep_shape:
        words.append(spec.shape)
        # No article before a bare adjective ("a red" reads wrong): only when a shape is named.
        if rng.random() < 0.7:
            words.insert(0, _article(words[0]))
    if keep_bg:
        determiner = ("a", "the", "")[rng.integers(0, 3)]
        words += ["on", determiner, spec.background, "background"] if determiner else ["on", spec.background, "background"]
    if not words:  # only the size was kept, and the spec is medium: fall back to the shape
        words = [spec.shape]
    return " ".join(words)


def make_batch(rng: np.random.Generator, n: int) -> tuple[np.ndarray, list[str], list[ShapeSpec]]:
    """n random images uint8 (n, 32, 32, 3), one caption each, and the specs they were drawn from."""
    specs = random_specs(rng, n)
    return render(specs), [caption(s, rng) for s in specs], specs


@dataclass(frozen=True)
class Prompt:
    """What a prompt asks for; None where it does not say. Unrecognised words are kept in `unknown`."""

    shape: str | None
    colour: str | None
    background: str | None
    size: str | None
    unknown: tuple[str, ...]


def parse_prompt(text: str) -> Prompt:
    """Read a prompt into its attributes; never raises.

    Lowercases and drops punctuation; "grey" is read as "gray". A colour word is a background when
    it is directly followed by "background" or preceded by "on" / "on a" / "on the"; otherwise it is
    the fill. The first word to fill a role wins. `unknown` holds words outside VOCAB, plus palette
    words that cannot fill the role they stand in ("a black circle": black is not a fill colour;
    "on a red background": red is not a background) and repeats of a filled role, so a caller can
    warn about each.
    """
    words = [SYNONYMS.get(w, w) for w in _WORD.findall(text.lower())]
    found: dict[str, str] = {}
    unknown: list[str] = []

    def put(role: str, word: str) -> None:
        if role in found:
            unknown.append(word)
        else:
            found[role] = word

    for i, word in enumerate(words):
        if word in SHAPES:
            put("shape", word)
        elif word in SIZES:
            put("size", word)
        elif word in COLOURS or word in BACKGROUNDS:
            followed = i + 1 < len(words) and words[i + 1] == "background"
            preceded = (i >= 1 and words[i - 1] == "on") or (
                i >= 2 and words[i - 2] == "on" and words[i - 1] in ("a", "an", "the")
            )
            role, palette = ("background", BACKGROUNDS) if followed or preceded else ("colour", COLOURS)
            if word in palette:
                put(role, word)
            else:
                unknown.append(word)
        elif word not in VOCAB:
            unknown.append(word)
    return Prompt(
        shape=found.get("shape"),
        colour=found.get("colour"),
        background=found.get("background"),
        size=found.get("size"),
        unknown=tuple(unknown),
    )


def prompt_grid(with_size: bool) -> list[str]:
    """The evaluation prompts.

    Without size: every shape × colour × background, "a red circle on a black background" (54).
    With size: every size × shape × colour, "a small red circle" (36).
    """
    if with_size:
        return [f"a {size} {colour} {shape}" for size in SIZES for shape in SHAPES for colour in COLOURS]
    return [
        f"{_article(colour)} {colour} {shape} on a {bg} background"
        for shape in SHAPES
        for colour in COLOURS
        for bg in BACKGROUNDS
    ]
