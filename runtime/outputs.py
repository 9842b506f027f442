"""Writing results: atomically, each file carrying the parameters that made it.

A PNG gets its parameters as JSON in a `dlab` tEXt chunk (and a human-readable `parameters` chunk
in the style other tools read). Every write goes to a temporary file in the target folder and is
moved into place with `os.replace`, so a crash or Ctrl-C never leaves a half-written image, and the
images finished before an interruption are kept.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, PngImagePlugin

from dlab.errors import BadInput


def ensure_writable_dir(path: Path) -> Path:
    """Create `path` if needed and prove we can write there; one clear error if not."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise BadInput(f"--out {path}: exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".dlab-probe-"):
            pass
    except OSError as e:
        raise BadInput(f"--out {path}: not writable ({e.strerror or e})") from None
    return path


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; outputs are ordinary files
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def png_bytes(image: np.ndarray | Image.Image, params: dict[str, Any] | None = None) -> bytes:
    import io

    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
    info = PngImagePlugin.PngInfo()
    if params:
        info.add_text("dlab", json.dumps(params, sort_keys=True))
        info.add_text("parameters", "; ".join(f"{k}: {v}" for k, v in params.items() if k != "trace"))
    buf = io.BytesIO()
    img.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def write_png(path: Path, image: np.ndarray | Image.Image, params: dict[str, Any] | None = None) -> Path:
    return atomic_write_bytes(path, png_bytes(image, params))


def read_png_params(path: Path) -> dict[str, Any]:
    with Image.open(path) as im:
        return json.loads(im.text["dlab"])


def atomic_write_json(path: Path, data: Any) -> Path:
    return atomic_write_bytes(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def make_grid(images: np.ndarray, cols: int | None = None, pad: int = 2, scale: int = 1) -> np.ndarray:
    """Tile (N, H, W, 3) uint8 images into one image, `pad` pixels of dark gray between them."""
    n, h, w, c = images.shape
    cols = cols or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    grid = np.full((rows * h + (rows + 1) * pad, cols * w + (cols + 1) * pad, c), 40, dtype=np.uint8)
    for i, im in enumerate(images):
        r, k = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + k * (w + pad)
        grid[y : y + h, x : x + w] = im
    if scale > 1:
        grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    return grid


def slug(text: str, max_len: int = 40) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return (s[:max_len].rstrip("-")) or "untitled"


def unique_stem(folder: Path, stem: str) -> str:
    """`stem`, or `stem-2`, `stem-3`… so a new run never overwrites an earlier one."""
    candidate, n = stem, 1
    while any(folder.glob(f"{candidate}*")):
        n += 1
        candidate = f"{stem}-{n}"
    return candidate


def to_uint8(x: "np.ndarray") -> np.ndarray:
    """Model space [-1, 1] (N, C, H, W) float → (N, H, W, C) uint8."""
    arr = np.asarray(x, dtype=np.float32)
    arr = np.clip((arr + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    return arr.transpose(0, 2, 3, 1)
