"""The fit planner: for one model on one machine (a snapshot), the configuration that fits and why.

Choices, in order of preference (quality first, then speed):

1. **Device**: the GPU with the most free VRAM (plans never add VRAM across GPUs); the CPU when
   there is no NVIDIA GPU, or when nothing fits on the GPU but the model fits in RAM.
2. **Precision**: on a GPU bf16 from compute capability 8.0, fp16 from 7.0 (GTX 16xx: fp32, its
   fp16 is broken), fp32 below; fp8 and nf4 weights only when the native precision cannot fit
   even with model offload. On the CPU fp32, bf16 with AMX/AVX-512-bf16.
3. **Offload**: none → model (one component on the GPU at a time) → drop an optional text
   encoder (SD3's T5) → quantised weights → sequential (layer by layer, slowest).
4. **Batch**: the largest up to `max_batch` that fits (VAE slicing on when that is what lets it).
5. **Backend**: eager PyTorch, or ONNX Runtime for the built-in models when the machine's own
   bench report measured it faster (`dlab bench`); never by assumption.

Each choice records the constraint that bound it (`why`). Memory and time come from
`dlab.planner.fit`; a bench report's measured step time replaces the FLOPs model.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from dlab.errors import BadInput
from dlab.planner.fit import GiB, Config, Device, Estimate, costs, estimate
from dlab.planner.snapshot import GpuInfo, HardwareSnapshot
from dlab.profiles import ModelSpec, gpu_catalog, model_catalog

MAX_BATCH = 8
VOICE_MAX_BATCH = 16  # autoregressive candidates at once, as Tortoise picks on a > 14 GiB GPU
BUILTIN_BACKENDS = ("eager", "onnx")


class Plan(BaseModel):
    model: str
    model_name: str
    kind: str
    fits: bool
    device: str  # "cuda:0", "cpu"
    device_name: str
    backend: str  # "eager" | "onnx"
    provider: str | None = None  # ORT execution provider
    precision: str
    width: int | None = None
    height: int | None = None
    batch: int
    offload: str
    drop_optional: list[str] = Field(default_factory=list)
    vae_slicing: bool = False
    vae_tiling: bool = False
    vae_fp16_fix: bool = False
    vram_gib: float | None = None  # device memory needed (GPU: peak + CUDA context)
    peak_gib: float | None = None
    budget_gib: float  # what the device offers to plan against
    ram_gib: float
    ram_budget_gib: float
    seconds_per_image: float | None = None
    seconds_per_audio_second: float | None = None
    measured: bool = False  # step time from this machine's bench report
    why: dict[str, str] = Field(default_factory=dict)
    confidence: str = ""
    nearest: str | None = None  # when the request does not fit: the closest configuration that does


# ------------------------------------------------------------------------------------ parsing
_RES = re.compile(r"^\s*(\d+)\s*[x×]\s*(\d+)\s*$", re.I)


def parse_resolution(text: str) -> tuple[int, int]:
    m = _RES.match(text or "")
    if not m:
        raise BadInput(f"--resolution {text!r}: expected WIDTHxHEIGHT, e.g. 1024x1024")
    w, h = int(m.group(1)), int(m.group(2))
    if not (8 <= w <= 8192 and 8 <= h <= 8192):
        raise BadInput(f"--resolution {text!r}: each side must be between 8 and 8192 pixels")
    return w, h


def find_model(model_id: str) -> ModelSpec:
    spec = model_catalog().get(model_id)
    if spec is None:
        known = ", ".join(model_catalog().ids)
        raise BadInput(f"unknown model {model_id!r}; known models: {known}")
    return spec


# ------------------------------------------------------------------------------------ devices
def _pcie(g: GpuInfo) -> float:
    gen = g.pcie_gen_max or g.pcie_gen_current or 4
    width = g.pcie_width_max or g.pcie_width_current or 16
    return costs().time.pcie_gbs.get(str(min(max(gen, 3), 5)), 24.0) * width / 16


def gpu_device(g: GpuInfo, precision: str) -> Device:
    """A GPU as the fit model sees it: free VRAM less the reserve, catalog TFLOPS and bandwidth."""
    m = costs().memory
    total = g.memory_total_bytes or 0
    free = g.memory_free_bytes if g.memory_free_bytes is not None else total
    reserve = max(m.free_vram_reserve_fraction * total, m.free_vram_reserve_min_gib * GiB)
    spec = gpu_catalog().match(g.name or "", total) if g.name else None
    if spec is None:
        tflops, bw = 20.0, 400.0  # unknown card: a mid-range guess, flagged in the plan's confidence
    elif precision == "fp32":
        tflops, bw = spec.fp32_tflops, spec.memory_bandwidth_gbs
    elif precision == "bf16" and spec.bf16_tensor_tflops:
        tflops, bw = spec.bf16_tensor_tflops, spec.memory_bandwidth_gbs
    else:
        tflops, bw = spec.fp16_tensor_tflops, spec.memory_bandwidth_gbs
    return Device(kind="cuda", name=g.name or f"GPU {g.index}", memory_bytes=max(free - reserve, 0),
                  tflops=tflops, bandwidth_gbs=bw, pcie_gbs=_pcie(g))


def cpu_device(snap: HardwareSnapshot, measured: dict[int, float] | None = None) -> Device:
    t = costs().time
    cpu = snap.cpu
    cores = cpu.physical_cores or cpu.logical_cores or 1
    ghz = (cpu.freq_max_mhz or 2500) / 1000
    per_cycle = t.cpu_flops_per_cycle_avx512 if cpu.avx512 else t.cpu_flops_per_cycle_avx2
    tflops = cores * ghz * per_cycle * t.cpu_efficiency / 1000
    avail = snap.memory.available_bytes or snap.memory.total_bytes or 0
    # The RAM check (process + model + activations against available RAM) is the binding one.
    return Device(kind="cpu", name=cpu.model or "CPU", memory_bytes=float(avail),
                  tflops=tflops, bandwidth_gbs=50.0, measured=measured)


def gpu_precision(g: GpuInfo) -> tuple[str, str]:
    cc = g.compute_capability
    name = (g.name or "").upper()
    if cc is None:
        return "fp16", "compute capability unknown: fp16 assumed"
    if cc >= (8, 0):
        return "bf16", f"compute capability {cc[0]}.{cc[1]} ≥ 8.0: bf16 (fp16's range without its overflows)"
    if "GTX 16" in name:
        return "fp32", "GTX 16xx fp16 produces NaNs/black images: fp32"
    if cc >= (7, 0):
        return "fp16", f"compute capability {cc[0]}.{cc[1]}: fp16 tensor cores, no bf16"
    return "fp32", f"compute capability {cc[0]}.{cc[1]} < 7.0: fp16 is slow or unsupported, fp32"


# ------------------------------------------------------------------------------------ bench report
def bench_report_path() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir("dlab", appauthor=False)) / "bench" / "latest.json"


def load_bench(path: Path | None = None) -> dict[str, Any] | None:
    path = path or bench_report_path()
    try:
        data = json.loads(Path(path).read_text())
        return data if isinstance(data, dict) and isinstance(data.get("step_times"), list) else None
    except (OSError, ValueError):
        return None


def measured_steps(bench: dict | None, model: str, backend: str, precision: str, device: str) -> dict[int, float] | None:
    """{samples per call: seconds per sample} measured by `dlab bench` (a guided step of `batch`
    images is one call on 2 × batch samples), or None when the report has no such row."""
    if not bench:
        return None
    rows = [r for r in bench["step_times"] if r.get("model") == model and r.get("backend") == backend
            and r.get("precision") == precision and r.get("device") == device]
    table = {}
    for r in rows:
        n = int(r.get("call_batch", 2 * r["batch"]))
        table[n] = float(r["seconds"]) / n
    return table or None


def _pick_backend(bench, model_id: str, options: dict[str, str], device: str) -> tuple[str, dict[int, float] | None, str | None]:
    """Of {backend: precision}, the one this machine's bench report measured fastest (per sample at
    the largest call measured by both); (backend, its table, why) or ("eager", None, None)."""
    timed = {b: t for b, p in options.items() if (t := measured_steps(bench, model_id, b, p, device))}
    if not timed:
        return "eager", None, None
    common = set.intersection(*(set(t) for t in timed.values()))
    at = max(common) if common else None
    per = {b: (t[at] if at else min(t.values())) for b, t in timed.items()}
    best = min(per, key=per.get)
    others = ", ".join(f"{b} {v * 1000:.3f} ms" for b, v in sorted(per.items()))
    return best, timed[best], f"{best}: fastest in this machine's bench report (per sample: {others})"


# ------------------------------------------------------------------------------------ search
def _candidates(model: ModelSpec, native: str) -> list[tuple[str, str, bool, str]]:
    """(precision, offload, drop_optional, reason) in order of preference on a GPU."""
    optional = any(c.optional for c in model.component)
    out = [(native, "none", False, "everything fits on the GPU"),
           (native, "model", False, "the whole model does not fit at once: one component on the GPU at a time")]
    if optional:
        out += [(native, "none", True, "drops the optional text encoder to fit"),
                (native, "model", True, "drops the optional text encoder and offloads")]
    if model.denoiser.params > 500e6 and native != "fp32":
        # quantising small nets saves little and costs quality; quantised weights compute in 16 bits,
        # which GPUs without usable fp16 (GTX 16xx, pre-Volta) do not have
        for q in ("fp8", "nf4"):
            out += [(q, "none", False, f"{q} weights: the {native} denoiser does not fit"),
                    (q, "model", False, f"{q} weights and model offload")]
    if model.kind != "voice":  # Tortoise moves whole models, it has no layer-by-layer mode
        out.append((native, "sequential", False, "only layer-by-layer offload fits (slow)"))
    return out


def _fits(est: Estimate, device: Device, ram_budget: float) -> bool:
    return est.device_bytes <= device.memory_bytes and est.ram_bytes <= ram_budget


def _ram_budget(snap: HardwareSnapshot) -> float:
    total = snap.memory.total_bytes or 0
    avail = snap.memory.available_bytes if snap.memory.available_bytes is not None else total
    return float(avail)


def make_plan(
    model_id: str,
    snap: HardwareSnapshot,
    *,
    resolution: tuple[int, int] | None = None,
    batch: int | None = None,
    max_batch: int = MAX_BATCH,
    bench: dict | None = None,
    device: str | None = None,
    nearest: bool = True,
) -> Plan:
    """Plan `model_id` on `snap`. `nearest=False` skips the search for the closest configuration
    that fits (the search itself plans with it off)."""
    model = find_model(model_id)
    if model.kind == "voice":
        max_batch = max(max_batch, VOICE_MAX_BATCH)
    if batch is not None and not 1 <= batch <= 256:
        raise BadInput(f"--batch {batch}: must be between 1 and 256")
    if resolution is not None and model.kind != "image":
        raise BadInput(f"--resolution: {model.id} is a {model.kind} model, it has no resolution")
    w, h = resolution or (model.native_resolution or (0, 0))
    if model.kind == "image" and (w % (model.downsample * model.patch_size) or h % (model.downsample * model.patch_size)):
        step = model.downsample * model.patch_size
        raise BadInput(f"--resolution {w}x{h}: {model.id} needs multiples of {step} pixels")
    ram_budget = _ram_budget(snap)
    res_why = ("as asked" if resolution else "the model's native size") if model.kind == "image" else ""
    gpus = sorted(snap.gpus, key=lambda g: -(g.memory_free_bytes or g.memory_total_bytes or 0))
    if device is not None and device.startswith("cuda"):
        if ":" in device:
            index = device.split(":", 1)[1]
            gpus = [g for g in snap.gpus if str(g.index) == index]
            if not gpus:
                raise BadInput(f"--device {device}: this machine has no GPU {index} (see `dlab doctor`)")
        elif not gpus:
            raise BadInput(f"--device {device}: this machine has no NVIDIA GPU (see `dlab doctor`)")
    gpu_plan = None
    if gpus and device != "cpu":
        # The nearest-fit search is costly: run it only if the GPU plan is what gets returned.
        gpu_plan = _plan_gpu(model, snap, gpus[0], w, h, batch, max_batch, ram_budget, len(snap.gpus), bench)
        gpu_plan.why["resolution"] = res_why
        if gpu_plan.fits or (device or "").startswith("cuda"):
            return _with_nearest(gpu_plan, model, snap, w, h, batch, nearest)
    cpu = _plan_cpu(model, snap, w, h, batch, max_batch, ram_budget, bench, nearest)
    cpu.why["resolution"] = res_why
    if gpu_plan is None or device == "cpu":
        return cpu
    if cpu.fits:
        cpu.why["device"] = f"does not fit on {gpu_plan.device_name} ({gpu_plan.why.get('offload', '')}); runs on the CPU instead"
        return cpu
    return _with_nearest(gpu_plan, model, snap, w, h, batch, nearest)


def _with_nearest(plan: Plan, model: ModelSpec, snap: HardwareSnapshot, w: int, h: int, batch: int | None,
                  nearest: bool) -> Plan:
    if not plan.fits and nearest:
        plan.nearest = _nearest(model, snap, w, h, batch, plan.device)
    return plan


def _builtins() -> set[str]:
    return {m.id for m in model_catalog().model if m.source.startswith("dlab")}


def _describe(model: ModelSpec) -> dict[str, Any]:
    return {"model": model.id, "model_name": model.name, "kind": model.kind}


def _search_batch(model, config_for, device, ram_budget, batch, max_batch):
    """The largest batch (or exactly `batch`) whose estimate fits; returns (config, estimate, fits)."""
    sizes = [batch] if batch else list(range(max_batch, 0, -1))
    last = None
    for b in sizes:
        savers = [(False, False, False), (True, False, False), (True, True, False)]
        if model.vae_upcast:
            savers.append((True, True, True))
        for slicing, tiling, fix in savers:
            if (slicing and b == 1 and not tiling) or ((slicing or tiling) and not _has_vae(model)):
                continue  # slicing a batch of one changes nothing; no VAE, nothing to slice
            cfg = config_for(b, slicing)
            cfg.vae_tiling, cfg.vae_fp16_fix = tiling, fix and cfg.precision == "fp16"
            est = estimate(model, cfg, device)
            if last is None or b == sizes[-1] and not (slicing or tiling):
                last = (cfg, est)  # the plain smallest configuration is what a non-fit reports
            if _fits(est, device, ram_budget):
                return cfg, est, True
    return last[0], last[1], False


def _has_vae(model: ModelSpec) -> bool:
    return any(c.role == "vae" for c in model.component)


def _plan_gpu(model, snap, g, w, h, batch, max_batch, ram_budget, n_gpus, bench) -> Plan:
    native, prec_why = gpu_precision(g)
    if model.kind == "voice" and model.native_dtype == "fp32":
        native, prec_why = "fp32", f"{model.name} runs in fp32 (its half-precision mode is optional and lossy)"
    why: dict[str, str] = {}
    dev_name = g.name or f"GPU {g.index}"
    why["device"] = (f"{dev_name}: the GPU with the most free VRAM"
                     + (f" (of {n_gpus}; VRAM is never added across GPUs)" if n_gpus > 1 else ""))
    is_builtin = model.id in _builtins()
    backend, backend_why = "eager", None
    if is_builtin:
        gpu_prec = "fp16" if native == "bf16" else native  # dlab's ONNX export is fp32 or fp16
        backend, _, backend_why = _pick_backend(bench, model.id, {"eager": native, "onnx": gpu_prec}, "cuda")
    tried = []
    for precision, offload, drop, reason in _candidates(model, native):
        if backend == "onnx" and precision == "bf16":
            precision = "fp16"
        device = gpu_device(g, "bf16" if precision in ("fp8", "nf4") else precision)
        if is_builtin and (table := measured_steps(bench, model.id, backend, precision, "cuda")):
            device = replace(device, measured=table)

        def config_for(b, slicing, precision=precision, offload=offload, drop=drop):
            return Config(precision=precision, width=w, height=h, batch=b, offload=offload,
                          drop_optional=drop, vae_slicing=slicing)

        cfg, est, ok = _search_batch(model, config_for, device, ram_budget, batch, max_batch)
        tried.append((cfg, est, device, reason, ok, precision))
        if ok:
            break
    # the choice, or, when nothing fits, the configuration that came closest
    cfg, est, device, reason, ok, precision = tried[-1] if tried[-1][4] else min(tried, key=lambda c: c[1].device_bytes)
    why["precision"] = prec_why if precision == native else f"{precision}: {reason}"
    vram_known = g.memory_total_bytes is not None
    why["offload"] = reason if ok else (
        (f"does not fit: needs {est.device_gib:.1f} GiB VRAM even with {cfg.offload} offload, {precision}, batch {cfg.batch}; "
         f"{device.memory_bytes / GiB:.1f} GiB free after the reserve" if vram_known else
         f"{dev_name}'s VRAM could not be read (see `dlab doctor`): nothing can be planned on it")
        + (f"; and {est.ram_gib:.1f} GiB RAM of {ram_budget / GiB:.1f}" if est.ram_bytes > ram_budget else ""))
    why["batch"] = _batch_why(cfg, batch, max_batch, ok)
    if not is_builtin:
        why["backend"] = "eager PyTorch (diffusers-style pipeline): dlab exports only its built-in models to ONNX"
    else:
        why["backend"] = backend_why or "eager PyTorch on CUDA: no bench report on this machine yet (`dlab bench`)"
    plan = Plan(
        **_describe(model), fits=ok, device=f"cuda:{g.index}", device_name=dev_name, backend=backend,
        provider="CUDAExecutionProvider" if backend == "onnx" else None,
        precision=cfg.precision, width=w or None, height=h or None, batch=cfg.batch, offload=cfg.offload,
        drop_optional=[c.name for c in model.component if c.optional] if cfg.drop_optional else [],
        vae_slicing=cfg.vae_slicing, vae_tiling=cfg.vae_tiling, vae_fp16_fix=cfg.vae_fp16_fix, vram_gib=est.device_gib, peak_gib=est.peak_bytes / GiB,
        budget_gib=device.memory_bytes / GiB, ram_gib=est.ram_gib, ram_budget_gib=ram_budget / GiB,
        measured=bool(device.measured), why=why,
    )
    _set_time(plan, model, est)
    plan.confidence = _confidence(model, g, device, w, h)
    return plan


def _plan_cpu(model, snap, w, h, batch, max_batch, ram_budget, bench, nearest) -> Plan:
    precision = "bf16" if snap.cpu.fast_bf16 else "fp32"
    why = {"device": "no NVIDIA GPU: the CPU" if not snap.gpus else "the CPU",
           "precision": "bf16 autocast: this CPU has AMX / AVX-512-bf16" if precision == "bf16"
           else "fp32: without AMX / AVX-512-bf16, bf16 is emulated and slower than fp32"}
    is_builtin = model.id in _builtins()
    backend, measured = "eager", None
    if is_builtin:
        # the CPU provider has no bf16 kernels: ONNX Runtime competes in fp32
        backend, measured, backend_why = _pick_backend(bench, model.id, {"eager": precision, "onnx": "fp32"}, "cpu")
        if backend_why:
            why["backend"] = backend_why
        if backend == "onnx":
            precision = "fp32"
    if "backend" not in why:
        why["backend"] = ("eager PyTorch: no bench report on this machine yet (`dlab bench` measures ONNX Runtime against it)"
                          if is_builtin else "eager PyTorch: dlab exports only its built-in models to ONNX")
    device = cpu_device(snap, measured)

    def config_for(b, slicing):
        return Config(precision=precision, width=w, height=h, batch=b, offload="none", vae_slicing=slicing)

    cfg, est, ok = _search_batch(model, config_for, device, ram_budget, batch, max_batch)
    why["offload"] = "none: on the CPU the model lives in RAM" if ok else (
        f"does not fit in RAM: needs {est.ram_gib:.1f} GiB (batch {cfg.batch}), {ram_budget / GiB:.1f} GiB available")
    why["batch"] = _batch_why(cfg, batch, max_batch, ok)
    plan = Plan(
        **_describe(model), fits=ok, device="cpu", device_name=device.name, backend=backend,
        provider="CPUExecutionProvider" if backend == "onnx" else None, precision=precision,
        width=w or None, height=h or None, batch=cfg.batch, offload="none", vae_slicing=cfg.vae_slicing,
        vae_tiling=cfg.vae_tiling,
        vram_gib=None, peak_gib=est.peak_bytes / GiB, budget_gib=ram_budget / GiB,
        ram_gib=est.ram_gib, ram_budget_gib=ram_budget / GiB, measured=measured is not None, why=why,
    )
    _set_time(plan, model, est)
    plan.confidence = ("measured: step time from this machine's bench report" if measured is not None
                       else "estimated from FLOPs and a CPU efficiency factor: ±50 %; run `dlab bench`")
    if not ok and nearest:
        plan.nearest = _nearest(model, snap, w, h, batch, "cpu")
    return plan


def _batch_why(cfg: Config, batch: int | None, max_batch: int, ok: bool) -> str:
    if batch:
        return f"{batch}, as asked" + ("" if ok else " (does not fit)")
    if cfg.batch == max_batch:
        return f"{cfg.batch}: dlab's default cap (--batch to ask for more)"
    saver = " (VAE tiling on: decoded in 512² tiles)" if cfg.vae_tiling else (
        " (VAE slicing on: the batch is decoded one image at a time)" if cfg.vae_slicing else "")
    return f"{cfg.batch}: the largest that fits" + saver


def _set_time(plan: Plan, model: ModelSpec, est: Estimate) -> None:
    if model.kind == "voice":
        plan.seconds_per_audio_second = est.seconds_per_image / (model.native_seconds or 1.0)
    else:
        plan.seconds_per_image = est.seconds_per_image


def _confidence(model: ModelSpec, g: GpuInfo, device: Device, w: int, h: int) -> str:
    notes = []
    if device.measured:
        notes.append("time measured by this machine's bench report")
    else:
        notes.append("memory ±20 % (calibrated on published figures); time ±35 % (FLOPs × efficiency)")
    if not g.name or gpu_catalog().match(g.name, g.memory_total_bytes) is None:
        notes.append(f"{g.name or 'this GPU'} is not in the GPU catalog: speed is a guess (20 TFLOPS, 400 GB/s assumed)")
    if model.native_resolution and w * h > model.native_resolution[0] * model.native_resolution[1]:
        notes.append("above native resolution: attention cost grows faster than modelled (optimistic)")
    return "; ".join(notes)


def _nearest(model: ModelSpec, snap: HardwareSnapshot, w: int, h: int, batch: int | None, device: str) -> str | None:
    """The closest configuration that fits on the same device: a smaller batch, then smaller resolutions."""
    if batch and batch > 1:
        p = make_plan(model.id, snap, resolution=(w, h) if w else None, nearest=False, device=device)
        if p.fits:
            return _short(p)
    if model.kind == "image" and w and h:
        step = model.downsample * model.patch_size * 8
        for scale in (0.875, 0.75, 0.625, 0.5, 0.375, 0.25):
            sw, sh = max(step, int(w * scale) // step * step), max(step, int(h * scale) // step * step)
            p = make_plan(model.id, snap, resolution=(sw, sh), nearest=False, device=device)
            if p.fits:
                return _short(p)
    return None


def _short(p: Plan) -> str:
    res = f"{p.width}x{p.height} " if p.width else ""
    return f"{res}batch {p.batch}, {p.precision}, offload {p.offload} on {p.device_name}"


def check_request(plan: Plan) -> None:
    """Raise the one-line error `dlab generate` gives for settings the plan says will not fit."""
    if not plan.fits:
        hint = f"; nearest that fits: {plan.nearest}" if plan.nearest else ""
        what = f"at {plan.width}x{plan.height} " if plan.width else ""
        raise BadInput(f"{plan.model} {what}batch {plan.batch} will not fit this machine "
                       f"({plan.why.get('offload', '')}){hint} (--force to try anyway)")
