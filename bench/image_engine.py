"""The image engine, measured in one process: CFG batching, sampler overhead, prompt adherence.

    python bench/image_engine.py                 # speed ratios only (a minute)
    python bench/image_engine.py --eval          # + the adherence table of the model card (~25 min on 2 cores)
    python bench/image_engine.py --eval --json bench/results/shapes-eval.json --card

Ratios, never absolute goals: (1) one batched forward of the [uncond, cond] batch against two
separate forwards; (2) the time a sampling run spends outside the denoiser, as a share of the time
inside it (goal ≤ 3 %); (3) adherence judged by dlab's evaluator (runtime/evaluate.py) for
20 seeds × every shape×colour×background prompt and every size×shape×colour prompt.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from dlab.runtime.backends import EagerBackend
from dlab.runtime.bench import median_time as _median_time
from dlab.runtime.image import ImageModel, denoise_prompts, initial_noise
from dlab.runtime.model_card import card_rows, record_evaluation, write_card


def median_time(fn, repeat: int) -> float:
    return _median_time(fn, repeat, warmup=1)


def cfg_speedup(model: ImageModel, backend, batch: int, repeat: int) -> dict:
    x, _ = initial_noise(0, batch, model.image_size)
    t = torch.full((batch,), 500, dtype=torch.long)
    (cond_e, cond_m), _ = model.encode(["a red circle on a black background"] * batch)
    (unc_e, unc_m), _ = model.encode([""] * batch)
    both = (torch.cat([unc_e, cond_e]), torch.cat([unc_m, cond_m]))
    x2, t2 = torch.cat([x, x]), torch.cat([t, t])
    one = median_time(lambda: backend(x2, t2, both), repeat)
    two = median_time(lambda: (backend(x, t, (unc_e, unc_m)), backend(x, t, (cond_e, cond_m))), repeat)
    return {"batch": batch, "batched_s": one, "separate_s": two, "speedup": two / one}


class TimedBackend:
    """Wraps a backend and adds up the seconds spent inside it."""

    def __init__(self, inner):
        self.inner, self.seconds = inner, 0.0
        self.name, self.device, self.precision = inner.name, inner.device, inner.precision

    def __call__(self, x, t, context):
        s = time.perf_counter()
        out = self.inner(x, t, context)
        self.seconds += time.perf_counter() - s
        return out


def sampler_overhead(model: ImageModel, backend, sampler: str, steps: int, batch: int) -> dict:
    timed = TimedBackend(backend)
    x, g = initial_noise(1, batch, model.image_size)
    prompts = ["a blue square on a white background"] * batch
    denoise_prompts(model, timed, prompts, x, sampler=sampler, steps=2, generator=g)  # warm-up
    timed.seconds = 0.0
    s = time.perf_counter()
    denoise_prompts(model, timed, prompts, x, sampler=sampler, steps=steps, guidance=3.0, generator=g)
    total = time.perf_counter() - s
    return {"sampler": sampler, "steps": steps, "batch": batch, "total_s": total, "denoiser_s": timed.seconds,
            "overhead_share": (total - timed.seconds) / timed.seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description="dlab image engine benchmark")
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--eval", action="store_true", help="also run the adherence evaluation")
    ap.add_argument("--only", nargs="*", help="evaluation configs to run (names above)")
    ap.add_argument("--json", type=Path, default=None, help="write all results here")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--card", action="store_true", help="record the evaluation in the model's JSON and model card")
    ap.add_argument("--eval-backend", choices=("eager", "onnx"), default="eager",
                    help="run the evaluation through this backend (onnx: ~3x faster on this CPU, same images within 1e-3)")
    ap.add_argument("--no-timing", action="store_true", help="skip the CFG and sampler-overhead timings")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = ImageModel.load(args.model)
    backend = EagerBackend(model.unet, precision=args.precision)
    results: dict = {"model": model.name, "model_hash": model.sha256, "precision": args.precision,
                     "threads": torch.get_num_threads(), "torch": torch.__version__}

    c = cfg_speedup(model, backend, batch=32, repeat=10) if not args.no_timing else None
    results["cfg"] = c
    if c:
        print(f"CFG, batch {c['batch']}: one batched forward {c['batched_s'] * 1e3:.1f} ms, two separate "
              f"{c['separate_s'] * 1e3:.1f} ms → batched is {c['speedup']:.2f}× faster")
    results["overhead"] = []
    for name, steps in (() if args.no_timing else (("ddim", 50), ("dpmpp_2m", 20), ("ddpm", 50))):
        o = sampler_overhead(model, backend, name, steps, batch=32)
        results["overhead"].append(o)
        print(f"{name:9s} {steps:4d} steps, batch 32: {o['total_s']:.2f} s total, {o['denoiser_s']:.2f} s in the "
              f"denoiser → sampler overhead {100 * o['overhead_share']:.2f} % of denoiser time (goal ≤ 3 %)")

    if args.eval:
        if args.eval_backend == "onnx":
            from dlab.runtime.onnx_backend import make_backend

            backend = make_backend(model, "onnx", "cpu", "fp32")
        results["eval_backend"] = backend.name
        results["eval"] = []
        print(f"\n{'config':22s} {'prompts':>7s} {'seeds':>5s} {'adherence':>9s}  shape  colour  bg    size   img/s")
        for r, copied_from in card_rows(model, backend, args.only):
            results["eval"].append(r)
            pa = r["per_attribute"]
            print(f"{r['name']:22s} {r['prompts']:7d} {r['seeds']:5d} {100 * r['accuracy']:8.1f}%  "
                  + "  ".join(f"{100 * pa[k]:5.1f}" if k in pa else "   - " for k in ("shape", "colour", "background", "size"))
                  + f"  {r['images_per_s']:6.1f}" + (f"  (= {copied_from}, not rerun)" if copied_from else ""), flush=True)
            if args.json:  # after every config: a long run interrupted keeps what it measured
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps(results, indent=2) + "\n")
    if args.card and results.get("eval"):
        record_evaluation(model.path, results["eval"])
        print(f"model card: {write_card(model.path)}", file=sys.stderr)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nwritten: {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
