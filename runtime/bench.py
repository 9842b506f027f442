"""`dlab bench`: measure this machine, in one run, and write a JSON + Markdown report.

What it measures, for the built-in image model (every figure a median of repeated runs in this one
process, so ratios compare like with like):

- denoiser step time per backend × precision × batch (one guided step = one call on 2·batch samples);
- ONNX Runtime vs eager, per batch;
- classifier-free guidance: one batched call vs two separate calls;
- DDIM-50 vs DDPM-1000 wall time for one image;
- predicted vs measured peak memory: peak RSS of a child process generating a batch on the CPU
  (`torch.cuda.max_memory_allocated` on a GPU), against `dlab.planner.fit`.

The report goes to `<data dir>/bench/<timestamp>.json` (+ `.md`) and `latest.json`, which the planner
reads (`dlab.planner.plan.load_bench`): the machine's own step times beat the FLOPs model.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from dlab.runtime.backends import EagerBackend
from dlab.runtime.image import ImageModel, ImageRequest, generate_images

BATCHES = (1, 8, 32)
MEMORY_BATCHES = (1, 8, 32)
FORMAT = "dlab.bench"
FORMAT_VERSION = 1


def median_time(fn: Callable[[], Any], repeat: int, warmup: int = 2) -> float:
    """Median wall time of `repeat` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _inputs(model: ImageModel, n: int) -> tuple[torch.Tensor, torch.Tensor, tuple]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, model.image_size, model.image_size, generator=g)
    t = torch.full((n,), 500, dtype=torch.long)
    (emb, mask), _ = model.encode(["a red circle on a black background"] * n)
    return x, t, (emb, mask)


def backends_to_measure(model: ImageModel, cuda: bool, cpu_fast_bf16: bool) -> list[tuple[str, str, str, Callable]]:
    """(backend, precision, device, factory) for every combination this machine can run."""
    from dlab.runtime.onnx_backend import make_backend

    out: list[tuple[str, str, str, Callable]] = [
        ("eager", "fp32", "cpu", lambda: EagerBackend(model.unet, "cpu", "fp32")),
        ("onnx", "fp32", "cpu", lambda: make_backend(model, "onnx", "cpu", "fp32")),
    ]
    if cpu_fast_bf16:
        out.append(("eager", "bf16", "cpu", lambda: EagerBackend(model.unet, "cpu", "bf16")))
    if cuda:
        prec = "bf16" if torch.cuda.get_device_capability() >= (8, 0) else "fp16"
        out += [("eager", "fp32", "cuda", lambda: EagerBackend(model.unet, "cuda", "fp32")),
                ("eager", prec, "cuda", lambda: EagerBackend(model.unet, "cuda", prec)),
                ("onnx", "fp32", "cuda", lambda: make_backend(model, "onnx", "cuda", "fp32")),
                ("onnx", "fp16", "cuda", lambda: make_backend(model, "onnx", "cuda", "fp16"))]
    return out


def measure_step_times(model: ImageModel, combos, batches=BATCHES, repeat: int = 5, log=print) -> list[dict]:
    rows = []
    for backend_name, precision, device, factory in combos:
        try:
            backend = factory()
        except Exception as e:  # a listed provider or precision this machine cannot run: say so, go on
            log(f"  {backend_name} {precision} {device}: skipped ({str(e).splitlines()[0]})")
            continue
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        for b in batches:
            x, t, ctx = _inputs(model, 2 * b)
            s = median_time(lambda: (backend(x, t, ctx), sync()), repeat)
            rows.append({"model": model.name, "backend": backend_name, "precision": precision, "device": device,
                         "provider": getattr(backend, "provider", None), "batch": b, "call_batch": 2 * b, "seconds": s})
            log(f"  {backend_name:5} {precision} {device:4} batch {b:3}: {s * 1000:8.2f} ms per guided step")
    return rows


def measure_cfg(model: ImageModel, batch: int = 8, repeat: int = 7) -> dict:
    backend = EagerBackend(model.unet, "cpu", "fp32")
    x, t, (emb, mask) = _inputs(model, 2 * batch)
    xs, ts, half = x[:batch], t[:batch], (emb[:batch], mask[:batch])
    batched = median_time(lambda: backend(x, t, (emb, mask)), repeat)
    separate = median_time(lambda: (backend(xs, ts, half), backend(xs, ts, half)), repeat)
    return {"batch": batch, "batched_s": batched, "separate_s": separate, "speedup": separate / batched}


def measure_samplers(model: ImageModel, backend) -> dict:
    def run(sampler: str, steps: int) -> float:
        # As `dlab generate image` runs it: guidance on the model's recommended interval.
        req = ImageRequest(prompt="a red circle", sampler=sampler, steps=steps, guidance=3.0, seed=0, batch=1,
                           guidance_interval=model.default_guidance_interval)
        t = time.perf_counter()
        generate_images(model, req, backend)
        return time.perf_counter() - t

    run("ddim", 5)  # warm
    ddim, ddpm = run("ddim", 50), run("ddpm", 1000)
    return {"backend": backend.name, "guidance_interval": model.default_guidance_interval, "ddim50_s": ddim, "ddpm1000_s": ddpm, "ratio": ddpm / ddim,
            "ddim_per_step_ms": ddim / 50 * 1000, "ddpm_per_step_ms": ddpm / 1000 * 1000}


CHILD = """
import resource, sys, torch
torch.set_num_threads({threads})
from dlab.runtime.image import ImageModel, ImageRequest, generate_images
from dlab.runtime.backends import EagerBackend
m = ImageModel.load()
r = generate_images(m, ImageRequest(prompt="a red circle", steps=5, guidance=3.0, seed=0, batch={batch}), EagerBackend(m.unet))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def measure_memory(batches=MEMORY_BATCHES) -> list[dict]:
    """Peak RSS of a fresh process generating each batch on the CPU, against the planner's prediction."""
    from dlab.planner.fit import GiB
    from dlab.planner.plan import make_plan
    from dlab.planner.probe import take_snapshot

    snap = take_snapshot()
    rows = []
    for b in batches:
        code = CHILD.format(threads=torch.get_num_threads(), batch=b)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        measured = int(out.stdout.strip().splitlines()[-1]) / GiB
        plan = make_plan("shapes", snap, batch=b, device="cpu", nearest=False)
        rows.append({"device": "cpu", "batch": b, "measured_gib": measured, "predicted_gib": plan.ram_gib,
                     "ratio": plan.ram_gib / measured})
    return rows


def run_bench(log=print, quick: bool = False) -> dict:
    from dlab.planner.probe import probe_cpu

    torch.manual_seed(0)
    model = ImageModel.load()
    cuda = torch.cuda.is_available()
    combos = backends_to_measure(model, cuda, probe_cpu().fast_bf16)
    batches = (1, 8) if quick else BATCHES
    log("denoiser step time")
    steps = measure_step_times(model, combos, batches, repeat=3 if quick else 5, log=log)
    ratios = []
    for b in batches:
        e = next((r for r in steps if r["backend"] == "eager" and r["precision"] == "fp32" and r["device"] == "cpu" and r["batch"] == b), None)
        o = next((r for r in steps if r["backend"] == "onnx" and r["device"] == "cpu" and r["batch"] == b), None)
        if e and o:
            ratios.append({"device": "cpu", "batch": b, "eager_over_onnx": e["seconds"] / o["seconds"]})
    log("classifier-free guidance")
    cfg = measure_cfg(model)
    log(f"  batched {cfg['batched_s'] * 1000:.2f} ms vs separate {cfg['separate_s'] * 1000:.2f} ms: ×{cfg['speedup']:.2f}")
    log(f"samplers (one image, guidance 3 {_interval_words(model.default_guidance_interval)}, eager fp32)")
    samplers = measure_samplers(model, EagerBackend(model.unet, "cpu", "fp32"))
    log(f"  DDIM-50 {samplers['ddim50_s']:.2f} s, DDPM-1000 {samplers['ddpm1000_s']:.2f} s: ×{samplers['ratio']:.1f}")
    log("peak memory (child processes)")
    memory = measure_memory((1, 8) if quick else MEMORY_BATCHES)
    for r in memory:
        log(f"  batch {r['batch']:3}: measured {r['measured_gib']:.3f} GiB, predicted {r['predicted_gib']:.3f} GiB (×{r['ratio']:.2f})")
    from dlab import __version__

    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "dlab": __version__,
        "taken_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "model_hash": model.sha256,
        "step_times": steps, "onnx_vs_eager": ratios, "cfg": cfg, "samplers": samplers, "memory": memory,
    }


def _interval_words(interval) -> str:
    return f"on {interval[0]} ≤ t < {interval[1]}" if interval else "on every step"


def to_markdown(r: dict) -> str:
    lines = [f"# dlab bench — {r['taken_at']}", "", f"torch {r['torch']}, {r['threads']} threads, model {r['model_hash'][:12]}", "",
             "## Denoiser step time (one guided step = one call on 2 × batch)", "",
             "| backend | precision | device | batch | ms / step | ms / image-step |", "|---|---|---|---|---|---|"]
    for s in r["step_times"]:
        lines.append(f"| {s['backend']} | {s['precision']} | {s['device']} | {s['batch']} | {s['seconds'] * 1000:.2f} | {s['seconds'] * 1000 / s['batch']:.3f} |")
    lines += ["", "## ONNX Runtime vs eager (CPU, fp32)", "", "| batch | eager ÷ ORT |", "|---|---|"]
    lines += [f"| {x['batch']} | {x['eager_over_onnx']:.2f} |" for x in r["onnx_vs_eager"]]
    c = r["cfg"]
    lines += ["", "## Classifier-free guidance", "",
              f"batch {c['batch']}: one batched call {c['batched_s'] * 1000:.2f} ms, two calls {c['separate_s'] * 1000:.2f} ms: ×{c['speedup']:.2f}"]
    s = r["samplers"]
    lines += ["", f"## Samplers (one image, guidance 3 {_interval_words(s.get('guidance_interval'))}, eager fp32)", "",
              f"DDIM-50 {s['ddim50_s']:.2f} s ({s['ddim_per_step_ms']:.1f} ms/step), DDPM-1000 {s['ddpm1000_s']:.2f} s "
              f"({s['ddpm_per_step_ms']:.1f} ms/step): DDPM-1000 takes ×{s['ratio']:.1f} the time"]
    lines += ["", "## Peak memory: predicted (planner) vs measured (child process peak RSS)", "",
              "| device | batch | measured GiB | predicted GiB | ratio |", "|---|---|---|---|---|"]
    lines += [f"| {m['device']} | {m['batch']} | {m['measured_gib']:.3f} | {m['predicted_gib']:.3f} | {m['ratio']:.2f} |" for m in r["memory"]]
    return "\n".join(lines) + "\n"


def write_report(report: dict, folder: Path | None = None) -> tuple[Path, Path]:
    from dlab.planner.plan import bench_report_path
    from dlab.runtime.outputs import atomic_write_bytes

    folder = Path(folder) if folder else bench_report_path().parent
    folder.mkdir(parents=True, exist_ok=True)
    stamp = report["taken_at"].replace(":", "").replace("-", "")[:15]
    jpath, mpath = folder / f"bench-{stamp}.json", folder / f"bench-{stamp}.md"
    text = json.dumps(report, indent=2)
    atomic_write_bytes(jpath, text.encode())
    atomic_write_bytes(mpath, to_markdown(report).encode())
    atomic_write_bytes(folder / "latest.json", text.encode())
    return jpath, mpath
