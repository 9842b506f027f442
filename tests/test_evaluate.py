"""dlab's shapes judge: it must read rendered images exactly, survive noise and blur, and say
"no shape" rather than guess."""

from __future__ import annotations

import numpy as np
import pytest

from dlab.runtime.evaluate import SIZE_TOL, Detection, adheres, classify, score
from dlab.runtime.shapes import BACKGROUNDS, COLOURS, SHAPES, SIZES, Prompt, parse_prompt, prompt_grid, random_specs, render

N = 2000


def blur3(images: np.ndarray) -> np.ndarray:
    """3×3 box blur, edges replicated, float."""
    padded = np.pad(images.astype(np.float32), ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    h, w = images.shape[1:3]
    return sum(padded[:, i : i + h, j : j + w] for i in range(3) for j in range(3)) / 9


def degrade(images: np.ndarray, rng: np.random.Generator, sigma: float = 10.0) -> np.ndarray:
    """Blur, then add N(0, σ) per channel on the 0–255 scale (the harsher order: noise stays sharp)."""
    noisy = blur3(images) + rng.normal(0.0, sigma, images.shape)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def size_band(size_word: str | None) -> tuple[float, float]:
    return SIZES[size_word] if size_word else (0.45, 0.55)


def exact(spec, det: Detection) -> bool:
    lo, hi = size_band(spec.size_word)
    return (
        det.shape == spec.shape
        and det.colour == spec.colour
        and det.background == spec.background
        and det.size is not None
        and lo - SIZE_TOL <= det.size <= hi + SIZE_TOL
    )


@pytest.fixture(scope="module")
def renders():
    rng = np.random.default_rng(2024)
    specs = random_specs(rng, N)
    images = render(specs)
    clean = [classify(img) for img in images]
    noisy = [classify(img) for img in degrade(images, rng)]
    return specs, clean, noisy


def test_clean_renders_are_read_exactly(renders):
    specs, clean, _ = renders
    accuracy = np.mean([exact(s, d) for s, d in zip(specs, clean)])
    assert accuracy >= 0.99, accuracy
    errors = np.array([d.size - s.size for s, d in zip(specs, clean) if d.size is not None])
    assert len(errors) == N and np.abs(errors).max() < SIZE_TOL


def test_noisy_blurred_renders_are_read(renders):
    specs, _, noisy = renders
    accuracy = np.mean([exact(s, d) for s, d in zip(specs, noisy)])
    assert accuracy >= 0.95, accuracy


@pytest.mark.parametrize("which", ["clean", "noisy"])
def test_no_shape_confusion(renders, which):
    specs, clean, noisy = renders
    dets = clean if which == "clean" else noisy
    confusion = {(t, p): 0 for t in SHAPES for p in (*SHAPES, None)}
    for s, d in zip(specs, dets):
        confusion[s.shape, d.shape] += 1
    assert confusion["square", "circle"] == 0 and confusion["circle", "square"] == 0
    wrong = sum(v for (t, p), v in confusion.items() if p is not None and p != t)
    assert wrong <= (0 if which == "clean" else N // 200), confusion


def test_confusion_per_shape_at_extreme_sizes():
    """Smallest and largest of each shape: the features must not drift with scale."""
    rng = np.random.default_rng(11)
    for shape in SHAPES:
        for size in SIZES:
            specs = random_specs(rng, 60, shape=shape, size=size)
            assert [classify(img).shape for img in render(specs)] == [shape] * 60, (shape, size)


@pytest.mark.parametrize("rgb", [*BACKGROUNDS.values(), *COLOURS.values(), (0, 0, 0), (255, 255, 255)])
def test_flat_image_has_no_shape(rgb):
    det = classify(np.full((32, 32, 3), rgb, dtype=np.uint8))
    assert det.shape is None and det.colour is None and det.size is None and det.reason


def test_pure_noise_has_no_shape():
    rng = np.random.default_rng(9)
    for _ in range(20):
        assert classify(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).shape is None
    for base in BACKGROUNDS.values():
        for sigma in (30, 60):
            img = np.clip(np.array(base) + rng.normal(0, sigma, (32, 32, 3)), 0, 255).astype(np.uint8)
            assert classify(img).shape is None, (base, sigma)


def test_upside_down_triangle_is_not_a_shape_of_the_set():
    specs = random_specs(np.random.default_rng(4), 30, shape="triangle")
    flipped = render(specs)[:, ::-1]
    assert all(classify(img).shape is None for img in flipped)


def test_background_and_colour_read_from_palettes():
    specs = random_specs(np.random.default_rng(8), 200)
    for s, img in zip(specs, render(specs)):
        det = classify(img)
        assert det.background == s.background and det.colour == s.colour
        assert np.allclose(det.bg_rgb, s.bg_rgb, atol=1) and np.allclose(det.fill_rgb, s.fill_rgb, atol=2)


def _det(**kw) -> Detection:
    base = dict(shape="circle", colour="red", background="gray", size=0.40, size_word="small")
    return Detection(**{**base, **kw})


def test_adheres_counts_only_named_attributes():
    assert adheres(parse_prompt("circle"), _det()) == {"shape": True}
    assert adheres(parse_prompt("a red square"), _det()) == {"shape": False, "colour": True}
    full = adheres(parse_prompt("a small red circle on a gray background"), _det())
    assert full == {"shape": True, "colour": True, "background": True, "size": True}
    assert adheres(parse_prompt(""), _det()) == {}
    assert adheres(parse_prompt("a blue hexagon"), _det()) == {"colour": False}


@pytest.mark.parametrize(
    "size, word, ok",
    [(0.30, "small", True), (0.275, "small", True), (0.26, "small", False), (0.47, "small", True),
     (0.49, "small", False), (0.53, "large", True), (0.51, "large", False), (0.725, "large", True),
     (0.74, "large", False), (None, "large", False)],
)
def test_adheres_size_tolerance(size, word, ok):
    prompt = Prompt(shape=None, colour=None, background=None, size=word, unknown=())
    assert adheres(prompt, _det(size=size)) == {"size": ok}


def _images_for(prompts: list[str], rng: np.random.Generator) -> np.ndarray:
    specs = []
    for text in prompts:
        p = parse_prompt(text)
        specs += random_specs(rng, 1, shape=p.shape, colour=p.colour, background=p.background, size=p.size)
    return render(specs)


def test_score_on_matching_images_is_perfect():
    rng = np.random.default_rng(3)
    for with_size in (False, True):
        prompts = prompt_grid(with_size)
        report = score(prompts, _images_for(prompts, rng))
        assert report.n == len(prompts) and report.accuracy == 1.0 and report.failures == []
        named = ("shape", "colour", "size") if with_size else ("shape", "colour", "background")
        assert report.counts == {a: len(prompts) for a in named}
        assert report.per_attribute == {a: 1.0 for a in named}


def test_score_reports_failures():
    rng = np.random.default_rng(6)
    prompts = prompt_grid(False)
    images = _images_for(prompts, rng)
    # The next prompt in the grid differs in background only (within one shape and colour).
    shifted = [prompts[(i + 1) % 3 + 3 * (i // 3)] for i in range(len(prompts))]
    report = score(shifted, images)
    assert report.accuracy == 0.0 and len(report.failures) == len(prompts)
    assert report.per_attribute == {"shape": 1.0, "colour": 1.0, "background": 0.0}
    assert all(f.wrong == ["background"] for f in report.failures)
    assert report.failures[0].prompt == shifted[0] and report.failures[0].detection.background == "black"
    assert score(prompts[:1], images[:1]).accuracy == 1.0
    with pytest.raises(ValueError):
        score(prompts[:2], images[:1])
    report.model_dump_json()  # the report serialises for --json
