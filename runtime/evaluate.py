"""dlab's own judge of "shapes" images: what shape, colour, background and size an image shows.

`classify` reads one 32×32 image without any model:

1. Background: the median of the border ring, named after the nearest `BACKGROUNDS` colour. A border
   that is not flat (median absolute deviation above `FLAT_TOL`) means no clear picture.
2. Foreground: pixels farther than `FG_DIST` (or 3.5σ of the border noise) from the background;
   the largest 4-connected component is the shape, so noise speckles do not count. Too much
   foreground away from it, or a fill that is not flat, means noise rather than a shape.
3. Fill colour: the median of the component's interior (eroded up to twice), named after the nearest
   `COLOURS` entry.
4. Coverage α per pixel: the projection of (pixel − bg) onto (fill − bg), so an anti-aliased
   or blurred edge pixel counts as the fraction of it the shape covers. The shape's area A is
   Σα over the component grown by two pixels (a blur moves mass but keeps it).
5. Shape from two coverage moments that blur and noise barely move:
   - skew of the vertical mass profile: 0 for circle and square, −0.57 for an upright triangle
     (its mass sits low: density ∝ depth below the apex);
   - corner ratio E[x²y²] / (E[x²]·E[y²]) about the centroid: 1 for a square (x and y independent,
     and a blur keeps them so), 2/3 for a disc, ~0.8 for the triangle.
   The nearest prototype in those units wins, unless it is too far (`SHAPE_TOL`, e.g. a triangle
   pointing down) or the extents are far from square: then shape=None.
   (The fill ratio A / (w·h), π/4 · 1 · ½, is kept as a diagnostic: a blur shrinks w and h and
   moves it more than it moves the moments.)
6. Size: side / diameter from the area and the shape's area factor, s = √(A/k), as a fraction of
   the image side (within ±0.01 on clean renders, ±0.02 blurred with σ=10 noise); the bounding-box
   size max(w, h) is kept as a diagnostic.

Every "can't tell" is a None with the reason in `Detection.reason`, never an exception.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict

from dlab.runtime.shapes import BACKGROUNDS, COLOURS, SIZES, Prompt, parse_prompt

FLAT_TOL = 20.0  # max median |x − median| per channel of a flat background or fill (noise σ=10 gives ~7)
PALETTE_TOL = 60.0  # max RGB distance to a palette colour to name it (jitter alone is ≤ 21)
FG_DIST = 40.0  # RGB distance from the background that marks a foreground pixel, at least
CORE_SPREAD = 0.15  # max interior spread of the fill, relative to the fill–background contrast
STRAY_FRACTION = 0.3  # foreground pixels away from the main component, relative to its size
MIN_AREA = 12.0  # px²; the smallest shape in the data set covers ~46
MIN_CONTRAST = 40.0  # RGB distance fill − background below which there is no shape to speak of
SIZE_TOL = 0.03  # slack on a named size band when judging adherence

# Prototype (vertical skew, corner ratio) per shape and the spread used to measure distance to it.
PROTOTYPES = {"circle": (0.0, 2 / 3), "square": (0.0, 1.0), "triangle": (-0.54, 0.81)}
FEATURE_SCALE = (0.15, 0.1)
SHAPE_TOL = 2.5  # in scaled units: beyond this from every prototype, shape=None
AREA_FACTOR = {"circle": math.pi / 4, "square": 1.0, "triangle": 0.5}


class Detection(BaseModel):
    """What `classify` sees in one image; None where it cannot tell (the reason says why)."""

    model_config = ConfigDict(frozen=True)

    shape: str | None
    colour: str | None
    background: str | None
    size: float | None  # side / diameter as a fraction of the image side
    size_word: str | None  # "small" / "large", None for medium or unknown
    # diagnostics
    reason: str | None = None  # why shape is None, if it is
    fill_rgb: tuple[float, float, float] | None = None
    bg_rgb: tuple[float, float, float] | None = None
    area_px: float = 0.0  # Σ coverage
    bbox_px: tuple[float, float] = (0.0, 0.0)  # coverage extent (width, height)
    bbox_size: float | None = None  # max(bbox) / image side
    fill_ratio: float | None = None  # area / bbox area
    skew: float | None = None  # skew of the vertical mass profile
    corner: float | None = None  # E[x²y²] / (E[x²]·E[y²]): 1 square, 2/3 circle
    shape_distance: float | None = None  # to the chosen prototype, scaled units


def _nearest(rgb: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> tuple[str | None, float]:
    names = list(palette)
    d = np.linalg.norm(np.array([palette[n] for n in names], dtype=np.float32) - rgb, axis=1)
    i = int(np.argmin(d))
    return (names[i] if d[i] <= PALETTE_TOL else None), float(d[i])


def _border(img: np.ndarray) -> np.ndarray:
    return np.concatenate([img[0], img[-1], img[1:-1, 0], img[1:-1, -1]])


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a boolean mask (flood fill; a shape is a few hundred pixels)."""
    h, w = mask.shape
    todo = set(np.flatnonzero(mask).tolist())
    best: list[int] = []
    while todo:
        stack = [todo.pop()]
        component = []
        while stack:
            p = stack.pop()
            component.append(p)
            r, c = divmod(p, w)
            for q, inside in ((p - w, r > 0), (p + w, r < h - 1), (p - 1, c > 0), (p + 1, c < w - 1)):
                if inside and q in todo:
                    todo.remove(q)
                    stack.append(q)
        if len(component) > len(best):
            best = component
    out = np.zeros(h * w, dtype=bool)
    out[best] = True
    return out.reshape(h, w)


def _dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(steps):
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        out = grown
    return out


def _erode(mask: np.ndarray) -> np.ndarray:
    return ~_dilate(~mask, 1)


def _size_word(size: float | None) -> str | None:
    if size is None:
        return None
    for word, (lo, hi) in SIZES.items():
        if lo <= size <= hi:
            return word
    return None


def _moments(alpha: np.ndarray, area: float) -> tuple[float, float]:
    """Skew of the vertical mass profile and the corner ratio E[x²y²] / (E[x²]·E[y²]) about the centroid."""
    h, w = alpha.shape
    y = np.arange(h, dtype=np.float64)[:, None] + 0.5
    x = np.arange(w, dtype=np.float64)[None, :] + 0.5
    dy = y - (alpha * y).sum() / area
    dx = x - (alpha * x).sum() / area
    var_y = (alpha * dy**2).sum() / area
    var_x = (alpha * dx**2).sum() / area
    if var_x <= 0 or var_y <= 0:
        return 0.0, 0.0
    skew = (alpha * dy**3).sum() / area / var_y**1.5
    corner = (alpha * dx**2 * dy**2).sum() / area / (var_x * var_y)
    return float(skew), float(corner)


def classify(image: np.ndarray) -> Detection:
    """Read shape, colour, background and size from one uint8 (H, W, 3) image."""
    img = np.asarray(image, dtype=np.float32)
    side = img.shape[0]
    border = _border(img)
    bg = np.median(border, axis=0)
    spread = float(np.max(np.median(np.abs(border - bg), axis=0)))
    none = dict(shape=None, colour=None, size=None, size_word=None, bg_rgb=tuple(map(float, bg)))
    if spread > FLAT_TOL:
        return Detection(background=None, reason=f"background not flat (spread {spread:.0f})", **none)
    background, _ = _nearest(bg, BACKGROUNDS)

    # Noise scales the threshold: ~3.5σ keeps chance speckles to about one pixel in a hundred.
    noise_sigma = 1.4826 * spread
    dist = np.linalg.norm(img - bg, axis=2)
    mask = dist > max(FG_DIST, 3.5 * noise_sigma)
    if mask.sum() < MIN_AREA:
        return Detection(background=background, reason="no foreground", **none)
    component = _largest_component(mask)
    if component.sum() < MIN_AREA:
        return Detection(background=background, reason="foreground too small", **none)

    # The fill is read from the component's interior, where neither anti-aliasing nor blur reaches:
    # erode while enough pixels remain.
    core = component
    for _ in range(2):
        inner = _erode(core)
        if inner.sum() < 6:
            break
        core = inner
    fill = np.median(img[core], axis=0)
    colour, _ = _nearest(fill, COLOURS)
    direction = fill - bg
    contrast = float(np.linalg.norm(direction))
    if contrast < MIN_CONTRAST:
        return Detection(background=background, reason="no contrast", **none)
    # A blurred small shape has no flat interior, so the allowance grows with the contrast.
    core_spread = float(np.max(np.median(np.abs(img[core] - fill), axis=0)))
    if core_spread > max(FLAT_TOL, CORE_SPREAD * contrast):
        return Detection(background=background, reason=f"fill not flat (spread {core_spread:.0f})", **none)

    region = _dilate(component, 2)
    stray = int((mask & ~region).sum())
    if stray > STRAY_FRACTION * component.sum():
        return Detection(background=background, reason=f"{stray} foreground pixels outside the shape", **none)
    alpha = np.where(region, (img - bg) @ direction / contrast**2, 0.0)
    area = float(alpha.sum())
    clipped = np.clip(alpha, 0.0, 1.0)
    # Extents over the component's own rows / columns only, so noise elsewhere cannot stretch them.
    rows, cols = np.flatnonzero(component.any(axis=1)), np.flatnonzero(component.any(axis=0))
    width = float(clipped[rows.min() : rows.max() + 1].max(axis=0).sum())
    height = float(clipped[:, cols.min() : cols.max() + 1].max(axis=1).sum())
    fill_ratio = area / (width * height) if width * height > 0 else 0.0
    skew, corner = _moments(alpha, area)
    distances = {
        name: math.hypot((skew - s0) / FEATURE_SCALE[0], (corner - c0) / FEATURE_SCALE[1])
        for name, (s0, c0) in PROTOTYPES.items()
    }
    best = min(distances, key=distances.get)
    shape, reason = best, None
    if distances[best] > SHAPE_TOL:
        shape, reason = None, f"no shape fits (nearest {best}, distance {distances[best]:.1f})"
    elif not 0.6 <= width / height <= 1 / 0.6:
        shape, reason = None, f"aspect {width / height:.2f} fits no shape"
    size = math.sqrt(max(area, 0.0) / AREA_FACTOR[shape]) / side if shape else None
    return Detection(
        shape=shape,
        colour=colour,
        background=background,
        size=size,
        size_word=_size_word(size),
        reason=reason,
        fill_rgb=tuple(map(float, fill)),
        bg_rgb=tuple(map(float, bg)),
        area_px=area,
        bbox_px=(width, height),
        bbox_size=max(width, height) / side,
        fill_ratio=fill_ratio,
        skew=skew,
        corner=corner,
        shape_distance=distances[best],
    )


def adheres(prompt: Prompt, det: Detection) -> dict[str, bool]:
    """Per attribute the prompt names, whether the image shows it. Unnamed attributes do not count.

    A named size holds when the detected size lies in its band widened by `SIZE_TOL` on both sides.
    """
    result: dict[str, bool] = {}
    if prompt.shape is not None:
        result["shape"] = det.shape == prompt.shape
    if prompt.colour is not None:
        result["colour"] = det.colour == prompt.colour
    if prompt.background is not None:
        result["background"] = det.background == prompt.background
    if prompt.size is not None:
        lo, hi = SIZES[prompt.size]
        result["size"] = det.size is not None and lo - SIZE_TOL <= det.size <= hi + SIZE_TOL
    return result


class Failure(BaseModel):
    index: int
    prompt: str
    wrong: list[str]  # the named attributes the image misses
    detection: Detection


class Report(BaseModel):
    """Prompt adherence over a set of images: an image passes when every named attribute holds."""

    n: int
    accuracy: float  # fraction of images passing on every named attribute
    per_attribute: dict[str, float]  # over the prompts that name that attribute
    counts: dict[str, int]  # how many prompts name each attribute
    failures: list[Failure]


def score(prompts: Sequence[str], images: np.ndarray | Sequence[np.ndarray]) -> Report:
    """Classify each image and judge it against its prompt (same order, same length)."""
    if len(prompts) != len(images):
        raise ValueError(f"{len(prompts)} prompts but {len(images)} images")
    right: dict[str, int] = {}
    named: dict[str, int] = {}
    failures: list[Failure] = []
    for i, (text, image) in enumerate(zip(prompts, images)):
        det = classify(image)
        verdict = adheres(parse_prompt(text), det)
        for attr, ok in verdict.items():
            named[attr] = named.get(attr, 0) + 1
            right[attr] = right.get(attr, 0) + int(ok)
        wrong = [attr for attr, ok in verdict.items() if not ok]
        if wrong:
            failures.append(Failure(index=i, prompt=text, wrong=wrong, detection=det))
    n = len(prompts)
    order = ("shape", "colour", "background", "size")
    return Report(
        n=n,
        accuracy=(n - len(failures)) / n if n else 0.0,
        per_attribute={a: right[a] / named[a] for a in order if a in named},
        counts={a: named[a] for a in order if a in named},
        failures=failures,
    )



# ------------------------------------------------------------------------------ model evaluation
class ModelEval(BaseModel):
    """Prompt adherence of one sampler configuration over a prompt set × seeds."""

    name: str
    sampler: str
    steps: int
    guidance: float
    guidance_interval: tuple[int, int] | None = None  # timesteps [start, end) where guidance applies
    prompts: int
    seeds: int
    accuracy: float
    per_attribute: dict[str, float]
    images_per_s: float
    seconds: float
    failures: list[str]  # "prompt → what was wrong", the first few


def evaluate_model(
    model,
    backend,
    prompts: Sequence[str],
    *,
    seeds: int = 20,
    sampler: str = "ddim",
    steps: int = 50,
    guidance: float = 3.0,
    guidance_interval: tuple[int, int] | None = None,
    base_seed: int = 0,
    chunk: int = 256,
    name: str | None = None,
    progress=None,
) -> ModelEval:
    """Generate `seeds` images for each prompt and score them with `classify`.

    The noise of the whole run comes from one generator seeded with `base_seed`, so a run is
    reproducible; prompts of a chunk are mixed in one batch (the core loop takes a prompt per
    image). `progress(done_images, total_images)` is called after each chunk."""
    import time

    import torch

    from dlab.runtime.image import denoise_prompts, initial_noise
    from dlab.runtime.outputs import to_uint8

    all_prompts = [p for p in prompts for _ in range(seeds)]
    noise, _ = initial_noise(base_seed, len(all_prompts), model.image_size)
    images = []
    t0 = time.perf_counter()
    for start in range(0, len(all_prompts), chunk):
        batch = all_prompts[start : start + chunk]
        g = torch.Generator().manual_seed(base_seed * 100_003 + start)
        out, _ = denoise_prompts(
            model, backend, batch, noise[start : start + len(batch)], sampler=sampler, steps=steps,
            guidance=guidance, guidance_interval=guidance_interval, generator=g,
        )
        images.append(to_uint8(out.clamp(-1, 1).numpy()))
        if progress is not None:
            progress(start + len(batch), len(all_prompts))
    seconds = time.perf_counter() - t0
    report = score(all_prompts, np.concatenate(images))
    return ModelEval(
        name=name or f"{sampler}-{steps} g{guidance:g}",
        sampler=sampler,
        steps=steps,
        guidance=guidance,
        guidance_interval=guidance_interval,
        prompts=len(prompts),
        seeds=seeds,
        accuracy=report.accuracy,
        per_attribute=report.per_attribute,
        images_per_s=len(all_prompts) / seconds,
        seconds=seconds,
        failures=[f"{f.prompt} → {', '.join(f.wrong)}" for f in report.failures[:10]],
    )
