"""Jobs: run a request and write its outputs. Shared by the CLI and the TUI."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dlab.runtime.image import ImageResult
from dlab.runtime.outputs import atomic_write_json, make_grid, slug, unique_stem, write_png

VIEW_SCALE = 4  # grids and strips of 32-px images are upscaled (nearest) so people can see them


@dataclass
class Written:
    images: list[Path] = field(default_factory=list)
    grid: Path | None = None
    trace: Path | None = None
    manifest: Path | None = None
    partial: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "images": [str(p) for p in self.images],
            "grid": str(self.grid) if self.grid else None,
            "trace": str(self.trace) if self.trace else None,
            "manifest": str(self.manifest) if self.manifest else None,
            "partial": self.partial,
        }


def output_stem(out_dir: Path, prompt: str, seed: int) -> str:
    return unique_stem(out_dir, f"{time.strftime('%Y%m%d-%H%M%S')}-{slug(prompt)}-s{seed}")


def write_image_result(result: ImageResult, out_dir: Path, partial_at: int | None = None) -> Written:
    """One PNG per image, a grid, the trace strip if any, and a JSON manifest; all atomic.

    `partial_at` marks images from a cancelled run (the prediction of x_0 at that step)."""
    params = dict(result.params)
    if partial_at is not None:
        params["cancelled_after_step"] = partial_at
    stem = output_stem(out_dir, params["prompt"], params["seed"])
    tag = "-partial" if partial_at is not None else ""
    w = Written(partial=partial_at is not None)
    for i, img in enumerate(result.images):
        w.images.append(write_png(out_dir / f"{stem}-{i:02d}{tag}.png", img, {**params, "index": i}))
    if len(result.images) > 1:
        w.grid = write_png(out_dir / f"{stem}-grid{tag}.png", make_grid(result.images, scale=VIEW_SCALE),
                           {**params, "view_scale": VIEW_SCALE})
    if result.trace is not None:
        # rows: images of the batch; columns: frames from noise to image
        frames, batch = result.trace.shape[:2]
        tiles = result.trace.transpose(1, 0, 2, 3, 4).reshape(frames * batch, *result.trace.shape[2:])
        w.trace = write_png(out_dir / f"{stem}-trace{tag}.png", make_grid(tiles, cols=frames, scale=VIEW_SCALE),
                            {**params, "trace_frames": frames, "view_scale": VIEW_SCALE})
    w.manifest = atomic_write_json(
        out_dir / f"{stem}{tag}.json",
        {"params": params, "seconds": round(result.seconds, 3), "unknown_words": result.unknown_words, **w.to_dict()},
    )
    return w


def noise_strip(image: np.ndarray, schedule: Any, timesteps: list[int], seed: int) -> np.ndarray:
    """The forward process of one (H, W, 3) uint8 image at `timesteps`, with one fixed noise draw."""
    import torch

    from dlab.runtime.outputs import to_uint8

    x0 = torch.from_numpy(image.astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    frames = [schedule.add_noise(x0.double(), noise.double(), t).float() for t in timesteps]
    return to_uint8(torch.cat(frames).clamp(-1, 1).numpy())
