"""The memory and time model: what one configuration of a model costs on one device.

Memory, on the device that runs the denoiser (bytes)::

    weights(c)   = params(c) × bytes(precision)          per component c (optional ones may be dropped)
    act_den      = B_eff × A × bytes_act                 B_eff = batch × (2 with CFG, else 1)
                   A = unet_elements_per_latent_pixel × (H/d)(W/d)                        U-Nets
                   A = transformer_elements_per_token_hidden × tokens × hidden           transformers
                   tokens = (H/d/p)(W/d/p) + text tokens
    act_vae      = n_dec × vae_elements_per_pixel × H × W × bytes_vae    n_dec = batch, or 1 with slicing
                   (H × W capped at one 512² tile with tiling; bytes_vae = 4 where an fp16 VAE is upcast)
    peak(none)       = Σ weights + max(act_den, act_vae)
    peak(model)      = max(weights(text), weights(den) + act_den, weights(den) + weights(vae) + act_vae)
    peak(sequential) = k × weights(den) / layers + max(act_den, act_vae)

`peak` is what `torch.cuda.max_memory_allocated` reports; the device needs peak + the CUDA context,
and a plan must fit the *free* VRAM of one GPU less a reserve (never the sum of several GPUs).
RAM: the process, plus every offloaded weight (all of them for model/sequential offload); on the
CPU the whole model and its activations live in RAM.

Time per denoiser call (seconds)::

    compute  = W / (TFLOPS × eff(W))     W = B_eff × F(res),  F(res) = F_native × (tokens/tokens_native)
               eff(W) = eff_max × W / (W + W½)   (small calls cannot fill the GPU; see gpu_call_seconds)
    weights  = bytes(den) / (bandwidth × bandwidth_efficiency)
    step     = max(compute, weights) + offload transfer (sequential: bytes(den) / PCIe every step)

    s/image  = (steps + fixed_overhead_steps) × step / batch + model-offload transfers / batch

Attention FLOPs grow with tokens², which the linear F(res) ignores: predictions above native
resolution are optimistic and say so. All constants are in profiles/costs.toml with sources.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

from pydantic import BaseModel, ConfigDict

from dlab.profiles import PROFILES_DIR, ModelComponent, ModelSpec, _read_toml, validate_profile

GiB = 1024**3
Precision = Literal["fp32", "fp16", "bf16", "fp8", "nf4"]
Offload = Literal["none", "model", "sequential"]
# Weight bytes per parameter. nf4: 4-bit weights plus one fp16 scale per 64 (bitsandbytes blocks).
WEIGHT_BYTES: dict[str, float] = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "fp8": 1.0, "nf4": 0.5 + 2 / 64}
# Quantised weights are dequantised to bf16 for the matmuls: activations are 16-bit.
ACT_BYTES: dict[str, float] = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "fp8": 2.0, "nf4": 2.0}
UNET_REFERENCE_WIDTH = 1280  # SD 1.5 / 2.1 / XL: the widest attention block
TEXT_TOKENS = {"mmdit": 333, "flux-dit": 512}  # SD3: 77 CLIP + 256 T5; Flux: 512 T5 tokens


class _Costs(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class MemoryCosts(_Costs):
    cuda_context_gib: float
    free_vram_reserve_fraction: float
    free_vram_reserve_min_gib: float
    process_ram_gib: float
    builtin_process_ram_gib: float
    unet_elements_per_latent_pixel: float
    transformer_elements_per_token_hidden: float
    vae_elements_per_pixel: float
    sequential_blocks_resident: float
    voice_kv_gib_per_candidate_fp32: float
    sources: dict[str, str]


class TimeCosts(_Costs):
    gpu_efficiency_max: float
    gpu_half_efficiency_tflop: float
    gpu_call_floor_ms: float
    bandwidth_efficiency: float
    pcie_gbs: dict[str, float]
    cpu_flops_per_cycle_avx2: float
    cpu_flops_per_cycle_avx512: float
    cpu_efficiency: float
    fixed_overhead_steps: float
    voice_tokens_per_second: float
    voice_candidates: int
    sources: dict[str, str]


class PriceCosts(_Costs):
    ram_usd_per_gb: float
    sources: dict[str, str]


class Costs(_Costs):
    schema_version: int
    memory: MemoryCosts
    time: TimeCosts
    prices: PriceCosts


@lru_cache(maxsize=1)
def costs() -> Costs:
    path = PROFILES_DIR / "costs.toml"
    return validate_profile(Costs, _read_toml(path), path)


@dataclass(frozen=True)
class Device:
    """What the model needs to know about where it runs: a GPU from the snapshot + catalog, or the CPU."""

    kind: Literal["cuda", "cpu"]
    name: str
    memory_bytes: float  # free VRAM (GPU) or available RAM (CPU) to plan against, after reserves
    tflops: float  # dense tensor TFLOPS at the precision class (GPU), or effective CPU TFLOPS
    bandwidth_gbs: float
    pcie_gbs: float = 0.0
    # From a bench report: {samples per call: seconds per sample}; replaces the FLOPs model.
    measured: dict[int, float] | None = None

    def measured_per_sample(self, call_batch: int) -> float | None:
        """The measurement at the nearest measured call size at or below `call_batch` (per-sample time
        falls with batch, so this errs slow), else the smallest measured."""
        if not self.measured:
            return None
        below = [b for b in self.measured if b <= call_batch]
        return self.measured[max(below) if below else min(self.measured)]


@dataclass
class Config:
    precision: Precision
    width: int
    height: int
    batch: int
    offload: Offload = "none"
    drop_optional: bool = False
    vae_slicing: bool = False  # decode the batch one image at a time
    vae_tiling: bool = False  # decode each image in tiles of the VAE's native size
    vae_fp16_fix: bool = False  # an fp16-safe VAE (e.g. madebyollin/sdxl-vae-fp16-fix): no fp32 upcast
    cfg: bool = True


@dataclass
class Estimate:
    peak_bytes: float  # device memory at peak (max_memory_allocated-like)
    device_bytes: float  # what the device must have: peak + CUDA context on a GPU
    ram_bytes: float
    seconds_per_image: float
    step_seconds: float
    parts: dict[str, float] = field(default_factory=dict)  # named terms, bytes

    @property
    def device_gib(self) -> float:
        return self.device_bytes / GiB

    @property
    def ram_gib(self) -> float:
        return self.ram_bytes / GiB


def components(model: ModelSpec, drop_optional: bool) -> list[ModelComponent]:
    return [c for c in model.component if not (drop_optional and c.optional)]


def latent_pixels(model: ModelSpec, width: int, height: int) -> float:
    return (width / model.downsample) * (height / model.downsample)


def tokens(model: ModelSpec, width: int, height: int) -> float:
    image = latent_pixels(model, width, height) / model.patch_size**2
    return image + TEXT_TOKENS.get(model.denoiser_kind, 0)


def denoiser_activation_elements(model: ModelSpec, width: int, height: int) -> float:
    """Peak activation elements of one image's denoiser forward pass."""
    m = costs().memory
    den = model.denoiser
    if model.denoiser_kind == "unet" or den.hidden_size is None:
        # The constant is for SD-width U-Nets (widest attention 1280 channels); narrower nets scale.
        width_scale = min(1.0, (den.hidden_size or UNET_REFERENCE_WIDTH) / UNET_REFERENCE_WIDTH)
        # Per feature-map pixel of the first level: after a patch stem (shapes: 2×2) there are p² fewer.
        return m.unet_elements_per_latent_pixel * width_scale * latent_pixels(model, width, height) / model.patch_size**2
    return m.transformer_elements_per_token_hidden * tokens(model, width, height) * den.hidden_size


def denoiser_gflops(model: ModelSpec, width: int, height: int) -> float:
    """One image, one step, no CFG: the catalog's native figure scaled by token count (linear)."""
    den = model.denoiser
    if den.gflops_per_step is None:
        # 2 FLOPs per parameter per token is the transformer rule; for U-Nets this is a floor.
        return 2 * den.params * tokens(model, width, height) / 1e9
    if model.native_resolution is None:
        return den.gflops_per_step
    nw, nh = model.native_resolution
    return den.gflops_per_step * tokens(model, width, height) / tokens(model, nw, nh)


def gpu_call_seconds(flops: float, tflops: float, params: float) -> float:
    """One denoiser call on a GPU: W / (eff_max × P) + a fixed cost, which is what makes
    eff(W) = eff_max × W / (W + W½) for the SD-sized nets the constants were fitted on. The fixed
    cost (kernel launches, Python) scales with the net's size below SD 1.5's 860 M parameters, with a
    floor: a 5 M-parameter net does not pay an SD U-Net's launch overhead."""
    t = costs().time
    peak = tflops * 1e12 * t.gpu_efficiency_max
    fixed = t.gpu_half_efficiency_tflop * 1e12 / peak * min(1.0, params / 860e6)
    return flops / peak + max(fixed, t.gpu_call_floor_ms / 1000)


def estimate(model: ModelSpec, config: Config, device: Device) -> Estimate:
    m, t = costs().memory, costs().time
    wb, ab = WEIGHT_BYTES[config.precision], ACT_BYTES[config.precision]
    comps = components(model, config.drop_optional)
    # Text encoders and VAEs are not quantised (fp8/nf4 apply to the denoiser, as in diffusers and
    # ComfyUI); in fp32 runs everything is fp32.
    side_bytes = 4.0 if config.precision == "fp32" else 2.0
    weights = {
        c.name: c.params * (wb if c.role in ("denoiser", "autoregressive") else side_bytes) for c in comps
    }
    by_role: dict[str, float] = {}
    for c in comps:
        by_role[c.role] = by_role.get(c.role, 0.0) + weights[c.name]
    den = model.denoiser
    w_den = weights[den.name]
    b_eff = config.batch * (2 if (config.cfg and model.uses_cfg) else 1)
    if model.kind == "voice":
        # The autoregressive stage's KV cache, per candidate sampled at once ("batch" for a voice model).
        act_den = config.batch * m.voice_kv_gib_per_candidate_fp32 * GiB * ab / 4
        b_eff = 2 if model.uses_cfg else 1  # the diffusion decoder runs one clip, conditional + free
    else:
        act_den = b_eff * denoiser_activation_elements(model, config.width, config.height) * ab
    has_vae = "vae" in by_role
    if has_vae and model.vae_upcast and config.precision == "fp16" and not config.vae_fp16_fix:
        by_role["vae"] *= 2  # the fp16 VAE is upcast to fp32 for decoding (its activations overflow)
        vae_ab = 4.0
    else:
        vae_ab = side_bytes if config.precision == "fp32" else 2.0
    n_dec = 1 if config.vae_slicing else config.batch
    pixels = config.width * config.height
    if config.vae_tiling:
        # diffusers tiles at the VAE's sample_size: the model's native resolution (512 for SD 1.5,
        # 1024 for SDXL, SD3 and Flux), so tiling only saves memory above it.
        tile = max(model.native_resolution or (512, 512))
        pixels = min(pixels, tile * tile)
    act_vae = n_dec * m.vae_elements_per_pixel * pixels * vae_ab if has_vae else 0.0
    total_w = sum(by_role.values())

    if device.kind == "cpu" or config.offload == "none":
        peak = total_w + max(act_den, act_vae)
    elif config.offload == "model" and model.kind == "voice":
        ar = sum(weights[c.name] for c in comps if c.role == "autoregressive")
        peak = max(ar + act_den, *weights.values())
    elif config.offload == "model":
        # diffusers leaves the denoiser on the GPU while the VAE decodes (the pipeline calls
        # vae.decode, which the offload hook on vae.forward does not see): measured, see models.toml.
        phases = [w_den + act_den, w_den + by_role.get("vae", 0.0) + act_vae]
        phases += [w for role, w in by_role.items() if role not in ("denoiser", "vae")]
        peak = max(phases)
    else:  # sequential
        blocks = max(den.layers or 24, 1)
        peak = m.sequential_blocks_resident * w_den / blocks + max(act_den, act_vae)

    process = (m.builtin_process_ram_gib if model.source.startswith("dlab") else m.process_ram_gib) * GiB
    if device.kind == "cpu":
        device_bytes = peak
        ram = process + peak
    else:
        device_bytes = peak + m.cuda_context_gib * GiB
        offloaded = 0.0 if config.offload == "none" else total_w
        ram = process + offloaded + max(weights.values())  # + one component in transit

    # time
    if (per_sample := device.measured_per_sample(b_eff)) is not None:
        step = per_sample * b_eff
    else:
        flops = b_eff * denoiser_gflops(model, config.width, config.height) * 1e9
        if device.kind == "cuda":
            compute = gpu_call_seconds(flops, device.tflops, den.params)
        else:
            compute = flops / (device.tflops * 1e12)
        read = w_den / (device.bandwidth_gbs * 1e9 * t.bandwidth_efficiency) if device.kind == "cuda" else 0.0
        step = max(compute, read)
    transfer_step = 0.0
    transfer_once = 0.0
    if device.kind == "cuda" and config.offload != "none" and device.pcie_gbs:
        if config.offload == "sequential":
            transfer_step = w_den / (device.pcie_gbs * 1e9)
        else:
            transfer_once = total_w / (device.pcie_gbs * 1e9)
    steps = model.default_steps
    per_image = ((steps + t.fixed_overhead_steps) * (step + transfer_step) + transfer_once) / config.batch
    if model.kind == "voice":
        # One clip: the diffusion decoder's steps, plus the autoregressive stage, which reads its
        # weights once per generated token for every batch of candidates (memory-bound).
        w_ar = sum(weights[c.name] for c in comps if c.role == "autoregressive")
        tokens_per_clip = t.voice_tokens_per_second * (model.native_seconds or 10.0)
        batches = -(-t.voice_candidates // config.batch)
        bw = device.bandwidth_gbs * 1e9 * t.bandwidth_efficiency
        per_image = (steps + t.fixed_overhead_steps) * (step + transfer_step) + transfer_once + tokens_per_clip * batches * w_ar / bw
    return Estimate(
        peak_bytes=peak,
        device_bytes=device_bytes,
        ram_bytes=ram,
        seconds_per_image=per_image,
        step_seconds=step + transfer_step,
        parts={"weights": total_w, "denoiser_weights": w_den, "denoiser_activations": act_den,
               "vae_decode": act_vae},
    )
