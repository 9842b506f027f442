"""Predicted vs published: every memory figure in profiles/models.toml against dlab's fit model.

Measured peaks (bound "exact") are compared with the predicted peak allocation (what
torch.cuda.max_memory_allocated reports, which is what the sources measured): within ±20 %. "at least"
figures (bound "lower"): predicted ≥ 80 % of them. A tool's stated minimum card (bound "upper"): dlab's
leanest configuration (offload up to the figure's, VAE slicing and tiling) must need no more than the
card (peak + CUDA context). An out-of-memory report: dlab's need must exceed the card.
"""

from __future__ import annotations

from dlab.planner.fit import GiB, Config, Device, estimate
from dlab.profiles import OFFLOADS, model_catalog

BIG = Device(kind="cuda", name="any", memory_bytes=1e15, tflops=165, bandwidth_gbs=1008, pcie_gbs=24)


def calibration_rows() -> list[dict]:
    out = []
    for m in model_catalog().model:
        for f in m.published:
            if "VRAM" not in f.what:
                continue
            w, h = f.resolution or m.native_resolution or (0, 0)
            cfg = Config(precision=f.precision or "fp16", width=w, height=h, batch=f.batch, offload=f.offload)
            est = estimate(m, cfg, BIG)
            peak, need = est.peak_bytes / GiB, est.device_bytes / GiB
            if f.outcome == "oom":
                pred, ok = need, need > f.value
            elif f.bound == "upper":  # "a card of this size is enough": the leanest config dlab knows
                modes = OFFLOADS[: OFFLOADS.index(f.offload) + 1]
                if m.kind == "voice":
                    modes = tuple(o for o in modes if o != "sequential")
                pred = min(estimate(m, Config(precision=cfg.precision, width=w, height=h, batch=f.batch, offload=o,
                                              vae_slicing=True, vae_tiling=True, vae_fp16_fix=True), BIG).device_bytes
                           for o in modes) / GiB
                ok = pred <= f.value
            elif f.bound == "lower":
                pred, ok = peak, peak >= 0.8 * f.value
            else:
                pred = peak
                ok = abs(pred / f.value - 1) <= 0.2
            out.append({"model": m.id, "what": f.what, "outcome": f.outcome, "bound": f.bound, "precision": cfg.precision,
                        "resolution": f"{w}x{h}" if w else "-", "batch": f.batch, "offload": f.offload, "published_gib": f.value,
                        "predicted_gib": round(pred, 2), "ratio": round(pred / f.value, 3), "ok": ok,
                        "source": f.source})
    return out




def time_rows() -> list[dict]:
    """Published speeds (it/s, or seconds per image with a step count) against the time model on the
    catalog's figures for the named GPU. Reported, not asserted: the time model claims ±35 %."""
    from dlab.planner.fit import gpu_call_seconds  # noqa: F401  (the formula these rows exercise)
    from dlab.profiles import gpu_catalog

    out = []
    for m in model_catalog().model:
        for f in m.published:
            if f.what not in ("it/s", "seconds per image") or not f.gpu or m.kind != "image" or f.gpu.startswith("CPU"):
                continue
            spec = gpu_catalog().match(f.gpu) or gpu_catalog().match("NVIDIA " + f.gpu)
            if spec is None:
                out.append({"model": m.id, "gpu": f.gpu, "what": f.what, "published": f.value, "predicted": None,
                            "ratio": None, "note": "GPU not in the catalog"})
                continue
            prec = f.precision or "fp16"
            tflops = spec.fp32_tflops if prec == "fp32" else (
                spec.bf16_tensor_tflops if prec in ("bf16", "fp8", "nf4") and spec.bf16_tensor_tflops else spec.fp16_tensor_tflops)
            dev = Device(kind="cuda", name=spec.name, memory_bytes=1e15, tflops=tflops,
                         bandwidth_gbs=spec.memory_bandwidth_gbs, pcie_gbs=24)
            w, h = f.resolution or m.native_resolution
            est = estimate(m, Config(precision=prec, width=w, height=h, batch=f.batch, offload=f.offload), dev)
            if f.what == "it/s":
                pred = 1 / est.step_seconds
            else:
                steps = f.steps or m.default_steps
                pred = est.seconds_per_image * (steps + 2) / (m.default_steps + 2)
            out.append({"model": m.id, "gpu": f.gpu, "what": f.what, "precision": prec, "batch": f.batch,
                        "offload": f.offload, "published": f.value, "predicted": round(pred, 2),
                        "ratio": round(pred / f.value, 2), "note": ""})
    return out
