"""Training and loading of the built-in text-to-image model "shapes".

Data is drawn on the fly from `dlab.runtime.shapes` (no download). A step is the DDPM regression loss
(Ho et al. 2020, eq. 14) on a v-prediction target by default (v = √ᾱ ε − √(1−ᾱ) x0, Salimans & Ho 2022),
with

- classifier-free guidance training: a caption is replaced by "" with probability `p_uncond`, so one
  model learns both branches (Ho & Salimans 2022, sec. 3.2);
- min-SNR-γ weighting (Hang et al. 2023, sec. 3.4): the x0-loss weight min(SNR, γ) expressed for the
  target, min(SNR, γ)/SNR for ε and min(SNR, γ)/(SNR+1) for v, which stops the many easy low-noise
  steps from dominating the gradient and speeds convergence several-fold; by default never below
  `snr_floor` = 0.25, so the noisiest steps (where v-weights go to 0, and where only the prompt can
  decide the colours) still count;
- an auxiliary layout loss (`aux_layout_weight`): a throw-away head on the U-Net's bottleneck regresses
  the size and centre of the drawn shape, which the generator knows, so the encoder learns the layout
  directly (in the spirit of REPA, Yu et al. 2024); the saved model has the same tensors as without it;
- AdamW with linear warm-up and cosine decay, gradient clipping, and an EMA of the weights (what is
  saved).

Schedule and target. The cosine schedule (Nichol & Dhariwal 2021) is the default: at 32×32 the linear
schedule spends its last quarter on nearly pure noise (their Fig. 3), and SD's scaled_linear ends at
SNR ≈ 0.005, so a sample would inherit the mean colour of its starting noise. The cosine schedule ends at
ᾱ_999 ≈ 2.4e-9, where ε-prediction breaks: x̂0 = (x_t − √(1−ᾱ) ε̂)/√ᾱ multiplies any error in ε̂ by
~2·10⁴ at t = 999, the first step of the "trailing" spacing dlab samples with. Measured: a 150-step
ε-model sampled from t = 999 reached |x| ≈ 16,000 (pure noise) while the same model from t = 980 gave
blobs. v-prediction has no division (x̂0 = √ᾱ x_t − √(1−ᾱ) v̂) and, at SNR ≈ 0, asks the net for the
prompt's mean image, which is exactly the layout and colours the prompt decides. So: cosine + v.
`prediction="epsilon"` is kept for experiments (pair it with "linear").

Reproducibility: with the same `TrainConfig` (seed, max_steps) and the same torch thread count, a run gives
bit-identical weights. A time budget (`minutes` without `max_steps`) is turned into a step count by timing a
few steps (`estimate_max_steps`); the count used is recorded, so passing it back as `max_steps` repeats
the run exactly. If `minutes` is given it is also a deadline: a run stopped by it is recorded as such
(`stopped_by_time`) and is not reproducible.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dlab.errors import BadFile
from dlab.runtime import shapes
from dlab.runtime.nets.text import TextEncoder, TextEncoderConfig, Tokenizer
from dlab.runtime.nets.unet import UNet, UNetConfig
from dlab.runtime.schedules import NoiseSchedule, make_schedule

FORMAT = "dlab.image-model"
FORMAT_VERSION = 1
MODEL_NAME = "shapes"

Progress = Callable[[int, "int | None", float, float], Any]  # (step, total, loss, elapsed_s)


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    # Batch 16 for the same 38 minutes (`dlab train image --minutes 38 --batch 16`, 5,030 of 5,243 steps before
    # the deadline), probe on size prompts × 4 seeds (/tmp/exp2/p.py, 2026-11-26): colour collapsed (15–20 %
    # against 99 %) while size sharpened (DDIM-50 g3 every step: size 90.3 % against 76.4 %, "large" no longer
    # overshoots). Not adopted; the size gain is a lead.
    # 24 for the shipped "shapes" (e877c701): `dlab train image --steps 8500 --seed 0`, 41.2 min (0.291 s/step).
    # Against batch 32 × 7,000 steps (a114f981, 42.4 min), the card's size row (DDIM-50 g3 on t < 700, ORT,
    # 36 size prompts × 20 seeds, /tmp/exp3/card_size.py, 2026-11-26): 93.5 % → 95.1 % (shape 100 %, colour 99.9 %);
    # fewer images (204 k against 224 k) but 21 % more steps. One standard error on that row is ~0.8 points.
    batch_size: int = 24
    max_steps: int | None = Field(None, ge=1, description="exact step count (reproducible)")
    minutes: float | None = Field(
        None, gt=0, description="time budget: sets max_steps when that is None, and is a deadline"
    )
    lr: float = 2e-3
    warmup_steps: int = 100
    min_lr_ratio: float = 0.05  # the cosine decays to lr * min_lr_ratio
    weight_decay: float = 0.01
    adam_betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = 1.0
    # Half-life ~350 steps: a fifth to a third of a 40-minute CPU run. The warm-up in `_Trainer.step` caps the
    # decay at (1 + n)/(10 + n), which passes 0.998 at step ~4,500 but stays below 0.999 until step ~9,000:
    # for a 7,000-step run any value above ~0.9987 gives the same weights. Averaging length barely matters for
    # the shipped recipe: one run of `dlab train image --steps 7000 --seed 0` (bit-identical to the shipped
    # a114f981), tracking other averages on the same trajectory, DDIM-50 g3 on t < 700 through ONNX Runtime,
    # size prompts × 8 seeds (/tmp/exp4/mema.py, 2026-11-26): 0.998 (shipped) 94.1 %, warm-up cap only
    # (0.999+) 94.4 %, EDM2 power EMA σ_rel 0.05 / 0.10 / 0.19: 94.4 / 95.1 / 92.0 %, no EMA 96.2 %; over
    # the card's 20 seeds no EMA gave 92.5 % against 93.5 % for 0.998, so the 8-seed spread is noise.
    ema_decay: float = 0.998
    p_uncond: float = Field(0.1, ge=0, le=1)
    # Auxiliary layout loss: a small head, trained with the net and thrown away after training, reads the
    # U-Net's bottleneck (after `mid_res`) and regresses the drawn shape's size and centre, which the data
    # generator knows exactly (`layout_targets`). Like REPA (Yu et al. 2024) it asks the encoder half for a
    # representation of the layout instead of leaving it to be inferred through the denoising loss alone.
    # 0 turns it off (what models before it used). Measured, DDIM-50 through ONNX Runtime, size prompts ×
    # 4 seeds (/tmp/exp/probe.py, 2026-11-26), the 3,300-step model without it vs 3,100 steps with 0.02:
    #   guidance 1: size 81.9 % → 88.2 %, colour 93.1 % → 95.8 %, shape 97.9 % → 100 %
    #   guidance 3: size 72.2 % → 76.4 % ("large" still overshoots: means 0.70–0.74 against a 0.55–0.70 band)
    # A stronger layout loss did not help: 3,100 steps with 0.08 (`--aux-layout-weight 0.08`, 37.4 min), same
    # probe (/tmp/exp2/p.py), adherence on size prompts: guidance 3 69.4 % (0.02: 76.4 %), guidance 3 on
    # t < 700 84.0 % (90.3 %), guidance 1 80.6 % (84.0 %); "small" overshot more (11–15 % above its band).
    aux_layout_weight: float = Field(0.02, ge=0)
    # None: plain MSE on the prediction target. How γ clamps (`snr_weighting`):
    # - "min_snr": Hang et al.'s x0-space weight min(SNR, γ); for v it is min(SNR, γ)/(SNR + 1) ≈ SNR at
    #   the noisy end, which starves the steps where a 32×32 sample fixes background and colour;
    # - "min_snr_plus_one": min(SNR + 1, γ + 1), for v min(1, (γ + 1)/(SNR + 1)): plain v-MSE at the
    #   noisy end, min-SNR's down-weighting at the clean end;
    # - "min_snr_floor": min-SNR's weight for the target, never below `snr_floor`.
    # Measured here with the old text encoder (0.02-std word embeddings, see nets/text.py), 3,400–3,500
    # steps × batch 32, DDIM-50, guidance 3, 54 prompts × 1 seed:
    #   min_snr (no pooled text)             shape 100 %, colour 17 %, background 69 %: 9 %
    #   plain v-MSE (no pooled text)         shape 22 %,  colour 13 %, background 90 %
    #   min_snr_plus_one + pooled text       shape 52 %,  colour 48 %, background 100 %: 28 %
    #   min_snr_floor 0.25 + pooled text     shape 94 %,  colour 11 %, background 100 %: 11 %
    # Colour failed in every one of them because the encoder never told the colour words apart. With
    # N(0, 1) word embeddings and scale-shift blocks, 700 steps (DDIM-25, guidance 3, 54 prompts × 2 seeds):
    #   min_snr_plus_one                     shape 27 %,  colour 90 %, background 100 %: 26 %
    #   min_snr_floor 0.25                   shape 33 %,  colour 82 %, background 100 %: 30 %
    # so the floor, which kept shape best in the long runs, is the default. Full runs, N(0, 1) words, 3,300
    # steps, DDIM-50, guidance 3, size prompts × 4 seeds through ONNX Runtime (/tmp/exp/interval2.py, 2026-11-26):
    #   min_snr_floor 0.25 (shipped before)  shape 100 %, colour 100 %, size 72 %
    #   min_snr_plus_one                     shape 52 %,  colour 99 %,  size 56 % ("large" overshoots more)
    #   min_snr_floor 0.1                    shape 100 %, colour 100 %, size 68 %
    # so more weight on the noisy steps hurt shape and size, and less did not help size either.
    snr_gamma: float | None = 5.0
    snr_weighting: Literal["min_snr", "min_snr_plus_one", "min_snr_floor"] = "min_snr_floor"
    snr_floor: float = Field(0.25, ge=0, le=1)
    schedule: Literal["cosine", "linear", "scaled_linear"] = "cosine"
    prediction: Literal["v_prediction", "epsilon"] = "v_prediction"
    num_train_timesteps: int = 1000
    beta_start: float | None = None  # linear kinds only; None: make_schedule's defaults
    beta_end: float | None = None
    precision: Literal["fp32", "bf16"] = "fp32"
    unet: UNetConfig = Field(default_factory=UNetConfig)
    text_layers: int = 2
    text_heads: int = 4


# What `dlab generate` uses for this model unless told otherwise (the JSON's "sampling"). Guidance only on
# t < 700 (Kynkäänniemi et al. 2024; `dlab.runtime.guidance.cfg_model`): on the noisiest steps, where the
# layout is decided, guidance at 3 pushes a "large" shape past its band (colour guidance grows the shape).
# Measured on the 3,100-step model (f1db34f0), DDIM-50 at guidance 3 through ONNX Runtime, size prompts ×
# 4 seeds (/tmp/exp2/p.py, 2026-11-26): every step 76.4 %, t < 700 90.3 %, t < 800 88.9 %, t < 500 88.9 %,
# t < 700 with 1.5 above 88.2 %; guidance rescale φ = 1 or APG (η = 0) on top of t < 700 added nothing.
# Over the card's 20 seeds: size prompts 74.7 % → 88.2 %, shape×colour×background 100 % → 99.7 %.
# The narrower nets that followed (`UNetConfig.base_channels`) keep 700 best: base 48, 4,300 steps, the same probe:
# t < 700 93.8 %, t < 600 91.7 %, t < 500 88.9 %, every step 81.9 %.
# The shipped base-32 model (a114f981), size prompts × 8 seeds: t < 800 94.4 %, t < 700 94.1 %: no reason to move.
# Neither a lower bound nor partial guidance above the interval helps the base-32 model, size prompts × 20 seeds
# (/tmp/exp2/p.py, 2026-11-26): [0, 700) 94.2 %, [200, 700) 94.0 %, [400, 700) 92.8 %, [0, 700) with 1.5 above
# 94.6 % ("large" mean 0.633 → 0.660, 7 % over its band): the spread of sizes is already set on the steps
# above 700, where guidance is 1 and the model's own conditional decides.
GUIDANCE_INTERVAL_END = 0.7  # of num_train_timesteps: [0, 700) at T = 1000


def recommended_sampling(num_train_timesteps: int) -> dict[str, Any]:
    return {"guidance_interval": [0, round(GUIDANCE_INTERVAL_END * num_train_timesteps)]}


def check_sampling(config: dict) -> None:
    """The JSON's optional "sampling" entry: ``guidance_interval`` is null or two integer timesteps
    0 ≤ start < end ≤ T. Raises ValueError naming what is wrong."""
    sampling = config.get("sampling")
    if sampling is None:
        return
    if not isinstance(sampling, dict):
        raise ValueError(f"sampling {sampling!r} is not an object")
    interval = sampling.get("guidance_interval")
    if interval is None:
        return
    T = config.get("schedule", {}).get("num_train_timesteps", 1000)
    if not (isinstance(interval, list) and len(interval) == 2 and all(type(v) is int for v in interval)
            and 0 <= interval[0] < interval[1] <= T):
        raise ValueError(f"sampling.guidance_interval {interval!r} is not [start, end] with 0 ≤ start < end ≤ {T}")


class TrainResult(BaseModel):
    weights: Path
    config: Path
    steps: int
    max_steps: int
    final_loss: float  # mean of the last 50 step losses
    wall_s: float
    s_per_step: float
    stopped_by_time: bool


# ------------------------------------------------------------------------------ model construction
def make_tokenizer() -> Tokenizer:
    return Tokenizer.from_words(shapes.VOCAB)


def text_config(cfg: TrainConfig, tokenizer: Tokenizer) -> TextEncoderConfig:
    return TextEncoderConfig(
        vocab_size=len(tokenizer), max_len=tokenizer.max_len, dim=cfg.unet.context_dim,
        layers=cfg.text_layers, heads=cfg.text_heads,
    )


def make_noise_schedule(cfg: TrainConfig) -> tuple[NoiseSchedule, dict]:
    """The schedule and the settings that rebuild it (what `shapes.json` records under "schedule")."""
    settings: dict[str, Any] = {"kind": cfg.schedule, "num_train_timesteps": cfg.num_train_timesteps}
    if cfg.schedule != "cosine":
        settings |= {k: v for k, v in (("beta_start", cfg.beta_start), ("beta_end", cfg.beta_end)) if v is not None}
    settings["prediction_type"] = cfg.prediction
    return make_schedule(**settings), settings


def layout_targets(specs: list[shapes.ShapeSpec]) -> torch.Tensor:
    """(n, 3) regression targets of the auxiliary layout head: size and centre, each scaled to about
    unit spread over the data set (size is uniform on 0.30–0.70, sd 0.115; a centre's sd is ~5 px)."""
    mid = shapes.IMAGE_SIZE / 2
    rows = [((s.size - 0.5) / 0.115, (s.cx - mid) / 5.0, (s.cy - mid) / 5.0) for s in specs]
    return torch.tensor(rows, dtype=torch.float32)


class _Trainer:
    """Models, optimiser, EMA and data stream of one run; `step()` does one optimisation step."""

    def __init__(self, cfg: TrainConfig, max_steps: int):
        self.cfg = cfg
        torch.manual_seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed)
        self.gen = torch.Generator().manual_seed(cfg.seed + 1)
        self.tokenizer = make_tokenizer()
        self.text_config = text_config(cfg, self.tokenizer)
        self.unet = UNet(cfg.unet)
        self.text = TextEncoder(self.text_config)
        self.schedule, self.schedule_settings = make_noise_schedule(cfg)
        modules: list[torch.nn.Module] = [self.unet, self.text]
        self.aux_head = None
        if cfg.aux_layout_weight > 0:
            mid_ch = cfg.unet.base_channels * cfg.unet.channel_mult[-1]
            mid_res = (cfg.unet.image_size // cfg.unet.patch_size) // 2 ** (len(cfg.unet.channel_mult) - 1)
            self.aux_head = torch.nn.Sequential(
                torch.nn.Flatten(), torch.nn.Linear(mid_ch * mid_res**2, 256), torch.nn.SiLU(), torch.nn.Linear(256, 3)
            )
            modules.append(self.aux_head)
            self._mid: torch.Tensor | None = None  # the bottleneck of the latest forward
            self.unet.mid_res.register_forward_hook(lambda _m, _i, out: setattr(self, "_mid", out))
        self.params = [p for m in modules for p in m.parameters()]
        self.ema = [p.detach().clone() for p in self.params]
        decay, no_decay = [], []
        for m in modules:
            for name, p in m.named_parameters():
                # Weight decay on matrices and kernels only: not on biases, norms, embeddings' offsets.
                (decay if p.ndim >= 2 and "position" not in name and "null" not in name else no_decay).append(p)
        self.opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr, betas=cfg.adam_betas, foreach=True,
        )
        self.max_steps = max_steps
        self.done = 0

    def lr_at(self, step: int) -> float:
        c = self.cfg
        if step < c.warmup_steps:
            return c.lr * (step + 1) / c.warmup_steps
        progress = min(1.0, (step - c.warmup_steps) / max(1, self.max_steps - c.warmup_steps))
        return c.lr * (c.min_lr_ratio + (1 - c.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))

    def batch(self):
        images, captions, specs = shapes.make_batch(self.rng, self.cfg.batch_size)
        drop = self.rng.random(len(captions)) < self.cfg.p_uncond
        captions = ["" if d else c for c, d in zip(captions, drop)]
        x0 = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0).contiguous()
        enc = self.tokenizer.encode(captions)
        return x0, enc.ids, enc.mask, layout_targets(specs)

    def loss(self, x0, ids, mask, layout: torch.Tensor | None = None) -> torch.Tensor:
        c = self.cfg
        t = torch.randint(0, c.num_train_timesteps, (x0.shape[0],), generator=self.gen)
        noise = torch.randn(x0.shape, generator=self.gen)
        x_t = self.schedule.add_noise(x0, noise, t)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=c.precision == "bf16"):
            context, context_mask = self.text(ids, mask)
            out = self.unet(x_t, t, context, context_mask)
        aux = 0.0
        if self.aux_head is not None:
            aux = c.aux_layout_weight * (self.aux_head(self._mid.float()) - layout).pow(2).mean()
            self._mid = None
        target = noise if c.prediction == "epsilon" else self.schedule.velocity(x0, noise, t)
        per_sample = (out.float() - target).pow(2).mean(dim=(1, 2, 3))
        if c.snr_gamma is None:
            return per_sample.mean() + aux
        # min-SNR-γ (Hang et al. 2023, sec. 3.4): an x0-loss weight, min(SNR, γ) or min(SNR + 1, γ + 1),
        # expressed for the target predicted: ÷ SNR for ε and ÷ (SNR + 1) for v.
        snr = self.schedule.snr(t)
        x0_weight = (snr + 1).clamp(max=c.snr_gamma + 1) if c.snr_weighting == "min_snr_plus_one" else snr.clamp(max=c.snr_gamma)
        weight = x0_weight / (snr + 1 if c.prediction == "v_prediction" else snr)
        if c.snr_weighting == "min_snr_floor":
            weight = weight.clamp(min=c.snr_floor)
        return (per_sample * weight.nan_to_num(1.0).float()).mean() + aux

    def step(self) -> float:
        for group in self.opt.param_groups:
            group["lr"] = self.lr_at(self.done)
        # torch.compile of the U-Net and text encoder (Inductor, C++) measured 1.1–1.2× faster per step here
        # (288–296 against 325–345 ms, base 32, batch 32) after ~3 minutes of compiling, but compiled CPU training
        # is not bit-reproducible run to run unless torch.use_deterministic_algorithms(True) is on
        # (/tmp/exp4/det.py, 2026-11-26). Not adopted: ~15 % more steps did not justify a second, separately
        # reproducible training path.
        loss = self.loss(*self.batch())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip, foreach=True)
        self.opt.step()
        self.done += 1
        # EMA with warm-up (decay grows as (1+n)/(10+n)), so early averages are not dominated by init.
        decay = min(self.cfg.ema_decay, (1 + self.done) / (10 + self.done))
        with torch.no_grad():
            torch._foreach_lerp_(self.ema, [p.detach() for p in self.params], 1.0 - decay)
        return float(loss.detach())

    def use_ema_weights(self) -> None:
        """Copy the EMA into the modules (at the end of training: they are what gets saved)."""
        with torch.no_grad():
            torch._foreach_copy_([p.data for p in self.params], self.ema)


# ------------------------------------------------------------------------------ time budget
def estimate_max_steps(cfg: TrainConfig, minutes: float, probe_steps: int = 20, warmup: int = 3) -> tuple[int, float]:
    """Time `probe_steps` real training steps (after `warmup` untimed ones) on a throw-away model and
    return (steps that fit in `minutes`, measured s/step). The probe's own time is not subtracted: it
    runs before the budget starts. The trainer's RNG state is not touched."""
    trainer = _Trainer(cfg, max_steps=max(probe_steps + warmup, cfg.warmup_steps + 1))
    for _ in range(warmup):
        trainer.step()
    t0 = time.perf_counter()
    for _ in range(probe_steps):
        trainer.step()
    s_per_step = (time.perf_counter() - t0) / probe_steps
    return max(1, int(minutes * 60 / s_per_step)), s_per_step


# ------------------------------------------------------------------------------ training
def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # safetensors creates its file private; a model file is for everyone to read
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_image_model(
    out_dir: Path | str,
    unet: UNet,
    text: TextEncoder,
    tokenizer: Tokenizer,
    schedule_settings: dict,
    extra: dict | None = None,
    name: str = MODEL_NAME,
) -> tuple[Path, Path]:
    """Write `<name>.safetensors` (fp32 tensors prefixed `unet.` / `text.`) and `<name>.json` (the
    configs, vocabulary, schedule and `extra`), each atomically. Returns both paths."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {
        prefix + k: v.detach().float().contiguous().clone()
        for prefix, module in (("unet.", unet), ("text.", text))
        for k, v in module.state_dict().items()
    }
    record = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": name,
        "image_size": unet.config.image_size,
        "unet": unet.config.to_dict(),
        "text_encoder": text.config.to_dict(),
        "tokenizer": {"kind": "word", "max_len": tokenizer.max_len, "vocab": tokenizer.to_list()},
        "schedule": schedule_settings,
        **(extra or {}),
    }
    weights, config_path = out_dir / f"{name}.safetensors", out_dir / f"{name}.json"
    _atomic_write(weights, lambda p: save_file(state, str(p), metadata={"format": FORMAT}))
    _atomic_write(config_path, lambda p: p.write_text(json.dumps(record, indent=2) + "\n"))
    return weights, config_path


def train_image_model(cfg: TrainConfig, out_dir: Path | str, progress: Progress | None = None) -> TrainResult:
    """Train "shapes" and write `shapes.safetensors` (EMA weights) and `shapes.json` into out_dir."""
    if cfg.max_steps is None and cfg.minutes is None:
        raise ValueError("give max_steps or minutes")
    max_steps = cfg.max_steps
    if max_steps is None:
        max_steps, _ = estimate_max_steps(cfg, cfg.minutes)
    deadline = None if cfg.minutes is None else cfg.minutes * 60

    trainer = _Trainer(cfg, max_steps)
    losses: list[float] = []
    stopped_by_time = False
    t0 = time.perf_counter()
    while trainer.done < max_steps:
        losses.append(trainer.step())
        elapsed = time.perf_counter() - t0
        if progress is not None:
            progress(trainer.done, max_steps, losses[-1], elapsed)
        if not math.isfinite(losses[-1]):
            raise FloatingPointError(f"training diverged at step {trainer.done} (loss {losses[-1]})")
        if deadline is not None and elapsed >= deadline and trainer.done < max_steps:
            stopped_by_time = True
            break
    wall_s = time.perf_counter() - t0

    trainer.use_ema_weights()
    final_loss = float(np.mean(losses[-50:]))
    training = {
        "weights": "ema",
        "training": cfg.model_dump(mode="json", exclude={"unet"}),
        "seed": cfg.seed,
        "steps": trainer.done,
        "max_steps": max_steps,
        "stopped_by_time": stopped_by_time,
        "final_loss": final_loss,
        "wall_s": round(wall_s, 1),
        "s_per_step": wall_s / max(1, trainer.done),
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "sampling": recommended_sampling(cfg.num_train_timesteps),
    }
    weights, config_path = save_image_model(
        out_dir, trainer.unet, trainer.text, trainer.tokenizer, trainer.schedule_settings, training
    )
    return TrainResult(
        weights=weights, config=config_path, steps=trainer.done, max_steps=max_steps, final_loss=final_loss,
        wall_s=wall_s, s_per_step=wall_s / max(1, trainer.done), stopped_by_time=stopped_by_time,
    )


# ------------------------------------------------------------------------------ loading
def load_image_model(path: Path | str) -> tuple[UNet, TextEncoder, Tokenizer, dict]:
    """Read `X.safetensors` and its `X.json`, check every tensor, return eval-mode fp32 models.

    Anything wrong with either file (missing, unreadable, not safetensors, a missing, extra or
    mis-shaped tensor, an invalid config) is a one-line `BadFile` naming the file.
    """
    from safetensors.torch import load_file

    path = Path(path)
    config_path = path.with_suffix(".json")
    if not path.is_file():
        raise BadFile(f"{path}: no such model file")
    if not config_path.is_file():
        raise BadFile(f"{config_path}: missing (the config that goes with {path.name})")
    try:
        config = json.loads(config_path.read_text())
        if config.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} config")
        # Configs written before `pooled_text` / `scale_shift` existed describe nets without them.
        unet = UNet(UNetConfig.from_dict({"pooled_text": False, "scale_shift": False, **config["unet"]}))
        text = TextEncoder(TextEncoderConfig.from_dict(config["text_encoder"]))
        tok = config["tokenizer"]
        tokenizer = Tokenizer.from_list(tok["vocab"], max_len=tok["max_len"])
        check_sampling(config)
    except (OSError, ValueError, KeyError, TypeError, ValidationError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise BadFile(f"{config_path}: not a valid {MODEL_NAME} model config ({reason})") from None
    if tokenizer.max_len != text.config.max_len or len(tokenizer) != text.config.vocab_size:
        raise BadFile(f"{config_path}: tokenizer and text encoder disagree")

    try:
        state = load_file(str(path))
    except Exception as e:  # safetensors raises its own SafetensorError, OSError or ValueError
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise BadFile(f"{path}: not a readable safetensors file ({reason})") from None

    known = set()
    for prefix, module in (("unet.", unet), ("text.", text)):
        expected = module.state_dict()
        for name, tensor in expected.items():
            got = state.get(prefix + name)
            if got is None:
                raise BadFile(f"{path}: missing tensor {prefix + name}")
            if got.shape != tensor.shape:
                raise BadFile(
                    f"{path}: tensor {prefix + name} has shape {tuple(got.shape)}, expected {tuple(tensor.shape)}"
                )
            if not got.is_floating_point() or not torch.isfinite(got).all():
                raise BadFile(f"{path}: tensor {prefix + name} is not finite floating point")
        module.load_state_dict({n: state[prefix + n].float() for n in expected})
        known |= {prefix + n for n in expected}
    extra = sorted(set(state) - known)
    if extra:
        raise BadFile(f"{path}: unexpected tensor {extra[0]}")
    return unet.eval(), text.eval(), tokenizer, config
