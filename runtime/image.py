"""Text-to-image: prompt → text encoder → guided denoiser → sampler → pixels.

`ImageModel` is a loaded checkpoint (U-Net, text encoder, tokenizer, noise schedule, and the
hash of its weights); `generate_images` runs one request through a backend. Writing files is the
caller's business (`dlab.runtime.outputs`), so the TUI and the CLI share this unchanged.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, field_validator

from dlab.errors import BadInput
from dlab.runtime.backends import Backend
from dlab.runtime.guidance import cfg_model
from dlab.runtime.outputs import to_uint8
from dlab.runtime.samplers import SAMPLERS, StepInfo, sample
from dlab.runtime.schedules import NoiseSchedule, make_schedule

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
BUILTIN_IMAGE_MODEL = WEIGHTS_DIR / "shapes.safetensors"
MAX_BATCH = 256
MAX_PROMPT_CHARS = 500


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class ImageModel:
    unet: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: Any
    config: dict[str, Any]
    path: Path
    sha256: str
    schedule: NoiseSchedule = field(init=False)

    def __post_init__(self) -> None:
        s = self.config.get("schedule", {})
        self.schedule = make_schedule(
            s.get("kind", "cosine"),
            num_train_timesteps=s.get("num_train_timesteps", 1000),
            **{k: s[k] for k in ("beta_start", "beta_end", "rescale_zero_terminal_snr", "prediction_type") if k in s},
        )

    @property
    def name(self) -> str:
        return self.config.get("name", self.path.stem)

    @property
    def image_size(self) -> int:
        return int(self.config.get("image_size", 32))

    @property
    def short_hash(self) -> str:
        return self.sha256[:12]

    @property
    def default_guidance_interval(self) -> tuple[int, int] | None:
        """The guidance interval the model's trainer recommends (its JSON's ``sampling.guidance_interval``,
        checked when the model loads), used when a request names none; None (every step) for a checkpoint
        that recommends nothing."""
        interval = (self.config.get("sampling") or {}).get("guidance_interval")
        return None if interval is None else (interval[0], interval[1])

    @classmethod
    def load(cls, path: Path | None = None) -> ImageModel:
        from dlab.runtime.train import load_image_model

        path = Path(path or BUILTIN_IMAGE_MODEL)
        unet, text_encoder, tokenizer, config = load_image_model(path)
        return cls(unet.eval(), text_encoder.eval(), tokenizer, config, path, file_sha256(path))

    @torch.inference_mode()
    def encode(
        self, prompts: list[str], backend: Backend | None = None
    ) -> tuple[tuple[torch.Tensor, torch.Tensor], list[str]]:
        """Text → (embedding, mask), and the words the vocabulary does not know. A backend with an
        `encode_text(ids, mask)` (the ONNX one) runs the text encoder; otherwise eager PyTorch does."""
        enc = self.tokenizer.encode(prompts)
        encode_text = getattr(backend, "encode_text", None) or self.text_encoder
        emb, mask = encode_text(enc.ids, enc.mask)
        unknown = sorted({w for words in enc.unknown for w in words})
        return (emb.float(), mask), unknown


class ImageRequest(BaseModel):
    """Everything that decides the output; recorded with every image."""

    model_config = ConfigDict(extra="forbid")

    prompt: str
    negative_prompt: str = ""
    sampler: str = "ddim"
    steps: int = 50
    guidance: float = 3.0
    guidance_rescale: float = 0.0
    guidance_interval: tuple[int, int] | None = None  # guide only on timesteps [start, end); None: every step
    eta: float = 0.0
    spacing: str = "trailing"
    seed: int = 0
    batch: int = 1

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: str) -> str:
        v = " ".join(v.split())
        if not v:
            raise ValueError("the prompt is empty")
        if len(v) > MAX_PROMPT_CHARS:
            raise ValueError(f"the prompt is {len(v)} characters; at most {MAX_PROMPT_CHARS}")
        return v

    def check(self, num_train_timesteps: int = 1000) -> ImageRequest:
        """Validate ranges; one `BadInput` line naming the option."""
        if self.sampler not in SAMPLERS:
            raise BadInput(f"--sampler {self.sampler!r}: choose one of {', '.join(SAMPLERS)}")
        if not 1 <= self.steps <= num_train_timesteps:
            raise BadInput(f"--steps {self.steps}: must be between 1 and {num_train_timesteps}")
        if not (self.guidance >= 0 and self.guidance <= 100):
            raise BadInput(f"--guidance {self.guidance}: must be between 0 and 100")
        if not 0 <= self.guidance_rescale <= 1:
            raise BadInput(f"--guidance-rescale {self.guidance_rescale}: must be between 0 and 1")
        if self.guidance_interval is not None:
            lo, hi = self.guidance_interval
            if not 0 <= lo < hi <= num_train_timesteps:
                raise BadInput(f"--guidance-interval {lo}:{hi}: need 0 ≤ START < END ≤ {num_train_timesteps}")
        if not 0 <= self.eta <= 1:
            raise BadInput(f"--eta {self.eta}: must be between 0 and 1")
        if not 1 <= self.batch <= MAX_BATCH:
            raise BadInput(f"--batch {self.batch}: must be between 1 and {MAX_BATCH}")
        if not 0 <= self.seed < 2**63:
            raise BadInput(f"--seed {self.seed}: must be between 0 and 2^63-1")
        if self.spacing not in ("leading", "trailing", "linspace"):
            raise BadInput(f"--spacing {self.spacing!r}: choose leading, trailing or linspace")
        return self


@dataclass
class ImageResult:
    images: np.ndarray  # (B, H, W, 3) uint8
    params: dict[str, Any]
    unknown_words: list[str]
    seconds: float
    trace: np.ndarray | None = None  # (frames, B, H, W, 3) uint8, noise → image
    finite: bool = True  # False when the sampler produced NaN/inf (fp16 overflow): the images are not valid


EVERY_STEP = "all"  # --guidance-interval value: guide on every step, whatever the model recommends


def request_params(model: ImageModel, req: ImageRequest, backend: Backend) -> dict[str, Any]:
    """What every output of `req` records: the settings that decide it, the model and its hash, the backend."""
    return {
        "prompt": req.prompt,
        "negative_prompt": req.negative_prompt,
        "sampler": req.sampler,
        "steps": req.steps,
        "guidance": req.guidance,
        "guidance_rescale": req.guidance_rescale,
        "guidance_interval": list(req.guidance_interval) if req.guidance_interval else None,
        "eta": req.eta if req.sampler == "ddim" else None,
        "spacing": req.spacing,
        "seed": req.seed,
        "batch": req.batch,
        "model": model.name,
        "model_hash": model.sha256,
        "backend": backend.name,
        "device": backend.device,
        "precision": backend.precision,
        "dlab": _dlab_version(),
    }


def parse_interval(text: str) -> tuple[int, int] | None:
    """"START:END" (timesteps, END exclusive) as a pair, or None for "all" (every step); one `BadInput`
    line when it is neither."""
    if text.strip().lower() == EVERY_STEP:
        return None
    parts = text.replace(" ", "").split(":")
    try:
        lo, hi = (int(p) for p in parts)
    except ValueError:
        raise BadInput(f"--guidance-interval {text!r}: expected START:END in timesteps (e.g. 0:700) or all") from None
    return lo, hi


def initial_noise(seed: int, batch: int, size: int, channels: int = 3) -> tuple[torch.Tensor, torch.Generator]:
    g = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn((batch, channels, size, size), generator=g), g


def trace_indices(total_steps: int, frames: int) -> list[int]:
    """Which finished steps to keep so `frames` frames run from the initial noise to the image."""
    if frames < 2:
        raise BadInput("--trace needs at least 2 frames")
    return sorted({round(i * total_steps / (frames - 1)) for i in range(frames)})


def denoise_prompts(
    model: ImageModel,
    backend: Backend,
    prompts: list[str],
    x: torch.Tensor,
    *,
    negative_prompt: str = "",
    sampler: str = "ddim",
    steps: int = 50,
    guidance: float = 3.0,
    guidance_rescale: float = 0.0,
    guidance_interval: tuple[float, float] | None = None,
    eta: float = 0.0,
    spacing: str = "trailing",
    generator: torch.Generator | None = None,
    callback: Callable[[StepInfo], bool | None] | None = None,
) -> tuple[torch.Tensor, list[str]]:
    """The core loop for a batch of (possibly different) prompts from the noise `x`:
    encode, guide (both branches in one batched call), sample. Returns the final x and the
    words the model's vocabulary did not know."""
    cond, unknown = model.encode(prompts, backend)
    uncond, _ = model.encode([negative_prompt], backend)
    guided = cfg_model(backend, cond, uncond, guidance, guidance_rescale, guidance_interval)
    options: dict[str, Any] = dict(spacing=spacing, generator=generator, callback=callback)
    if sampler == "ddim":
        options["eta"] = eta
    return sample(sampler, guided, x, model.schedule, steps, **options), unknown


def generate_images(
    model: ImageModel,
    request: ImageRequest,
    backend: Backend,
    callback: Callable[[StepInfo], bool | None] | None = None,
    trace_frames: int = 0,
    noise: torch.Tensor | None = None,
) -> ImageResult:
    """Run one request. `callback` sees every step and may return True to cancel
    (`SamplingCancelled` carries the partial batch). `noise` replaces the seed's initial noise (a
    slice of it, when a batch is split after running out of memory: DDIM images stay identical)."""
    req = request.check(model.schedule.num_train_timesteps)
    t0 = time.perf_counter()
    x, generator = initial_noise(req.seed, req.batch, model.image_size)
    if noise is not None:
        if noise.shape != x.shape:
            raise ValueError(f"noise of shape {tuple(noise.shape)} for a batch of shape {tuple(x.shape)}")
        x = noise.clone()

    frames: list[torch.Tensor] = []
    keep: set[int] = set()
    if trace_frames:
        keep = set(trace_indices(req.steps, trace_frames))
        if 0 in keep:
            frames.append(x.clone())

    def on_step(info: StepInfo) -> bool | None:
        if (info.index + 1) in keep:
            frames.append(info.x.detach().clone())
        return callback(info) if callback is not None else None

    out, unknown = denoise_prompts(
        model, backend, [req.prompt] * req.batch, x, negative_prompt=req.negative_prompt,
        sampler=req.sampler, steps=req.steps, guidance=req.guidance, guidance_rescale=req.guidance_rescale,
        guidance_interval=req.guidance_interval, eta=req.eta, spacing=req.spacing, generator=generator, callback=on_step,
    )
    seconds = time.perf_counter() - t0
    finite = bool(torch.isfinite(out).all())
    images = to_uint8(out.clamp(-1, 1).nan_to_num(0.0).cpu().numpy())
    trace = np.stack([to_uint8(f.clamp(-1, 1).cpu().numpy()) for f in frames]) if frames else None
    params = request_params(model, req, backend)
    return ImageResult(images=images, params=params, unknown_words=unknown, seconds=seconds, trace=trace, finite=finite)


def _dlab_version() -> str:
    from dlab import __version__

    return __version__
