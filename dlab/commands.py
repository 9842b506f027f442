"""The CLI's longer commands: validate, resolve device and precision, show progress, write, report.

Kept apart from `cli.py` so that `dlab doctor` never imports torch: only these functions do.
"""

from __future__ import annotations

import json
import random
import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from dlab.errors import BadFile, BadInput

err = Console(stderr=True)


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise BadInput(f"--device {device}: no CUDA device is usable by this torch build (see `dlab doctor`)")
        return device
    raise BadInput(f"--device {device!r}: choose auto, cpu or cuda[:N]")


def resolve_precision_for(device: str, precision: str) -> str:
    from dlab.runtime.backends import resolve_precision

    if device == "cpu":
        from dlab.planner.probe import probe_cpu

        return resolve_precision(precision, device, cpu_fast_bf16=probe_cpu().fast_bf16)
    import torch

    return resolve_precision(precision, device, gpu_cc=torch.cuda.get_device_capability(torch.device(device)))


@contextmanager
def cancel_on_sigint() -> Iterator[list[bool]]:
    """First Ctrl-C asks the sampler to stop after the current step (partial results are saved);
    a second one interrupts at once."""
    flag = [False]

    def handler(signum, frame):
        if flag[0]:
            raise KeyboardInterrupt
        flag[0] = True
        err.print("[yellow]stopping after this step… (Ctrl-C again to abort)[/yellow]")

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not in the main thread
        yield flag
        return
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def _progress(transient: bool = True) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TimeRemainingColumn(), console=err, transient=transient,
    )


def plan_generation(*, batch: Optional[int], device: str, precision: str, backend: str, force: bool):
    """The plan for the built-in model on this machine, with the user's explicit settings applied.

    Returns (plan, device, precision, backend) to run with. Settings the plan says will not fit are a
    one-line error naming the nearest that does, unless `force`."""
    from dlab.planner.plan import check_request, load_bench, make_plan
    from dlab.planner.probe import take_snapshot

    if backend not in ("auto", "eager", "onnx"):
        raise BadInput(f"--backend {backend!r}: choose auto, eager or onnx")
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise BadInput(f"--device {device!r}: choose auto, cpu or cuda[:N]")
    snap = take_snapshot()
    # Custom --model files are "shapes" nets too (dlab's trainer writes only that architecture).
    plan = make_plan("shapes", snap, batch=batch, bench=load_bench(), device=None if device == "auto" else device)
    if not plan.fits and not force:
        check_request(plan)
    dev = resolve_device(plan.device if device == "auto" else device)
    kind = plan.backend if backend == "auto" else backend
    prec = resolve_precision_for(dev, plan.precision if precision == "auto" else precision)
    if kind == "onnx" and prec == "bf16":
        if precision == "auto":
            prec = "fp16" if dev.startswith("cuda") else "fp32"  # dlab exports fp32 and fp16 graphs only
        elif backend == "auto":
            kind = "eager"  # an explicit bf16 wins over the plan's backend
    return plan, dev, prec, kind


def run_generate_image(
    *, prompt: str, negative: str, sampler: str, steps: int, guidance: float, guidance_rescale: float,
    guidance_interval: Optional[str] = None, eta: float, spacing: str, seed: Optional[int], batch: Optional[int],
    out: Path, model: Optional[Path], device: str, precision: str, trace: int, json_out: bool, backend: str = "auto", force: bool = False,
) -> None:
    from pydantic import ValidationError

    from dlab.runtime.fallback import generate_with_fallbacks
    from dlab.runtime.image import ImageModel, ImageRequest, parse_interval
    from dlab.runtime.jobs import write_image_result
    from dlab.runtime.outputs import ensure_writable_dir
    from dlab.runtime.samplers import SamplingCancelled

    seed = random.randrange(2**31) if seed is None else seed
    try:
        request = ImageRequest(
            prompt=prompt, negative_prompt=negative, sampler=sampler, steps=steps, guidance=guidance,
            guidance_rescale=guidance_rescale, eta=eta, spacing=spacing, seed=seed, batch=1 if batch is None else batch,
            guidance_interval=parse_interval(guidance_interval) if guidance_interval is not None else None,
        ).check()
    except ValidationError as e:
        raise BadInput(f"prompt: {e.errors()[0]['msg'].removeprefix('Value error, ')}") from None
    out = ensure_writable_dir(out)
    if model is not None and not Path(model).is_file():
        raise BadFile(f"--model {model}: no such file")
    plan, dev, prec, kind = plan_generation(batch=batch, device=device, precision=precision, backend=backend, force=force)
    if batch is None:
        request = request.model_copy(update={"batch": plan.batch})
    image_model = ImageModel.load(model)
    if guidance_interval is None:
        # The model's recommended interval (None: every step); `--guidance-interval all` guides every step.
        request = request.model_copy(update={"guidance_interval": image_model.default_guidance_interval})

    def make(precision_: str):
        from dlab.runtime.onnx_backend import make_backend

        return make_backend(image_model, kind, dev, precision_)

    steps_total = request.steps
    with cancel_on_sigint() as cancel, _progress() as bar:
        task = bar.add_task(f"{sampler} ×{request.batch}", total=steps_total)
        state = {"backend": None}

        def on_step(info) -> bool:
            bar.update(task, completed=info.index + 1)
            return cancel[0]

        def make_tracked(precision_: str):
            state["backend"] = make(precision_)
            return state["backend"]

        try:
            result = generate_with_fallbacks(image_model, request, make_tracked, prec, callback=on_step,
                                             trace_frames=trace, report=lambda m: err.print(f"[yellow]{m}[/yellow]"))
            written = write_image_result(result, out)
        except SamplingCancelled as stop:
            written = _write_partial(image_model, request, state["backend"], stop, out)
            _report(written, None, json_out)
            err.print(f"[yellow]cancelled after step {stop.step + 1} of {steps}; partial images kept[/yellow]")
            raise SystemExit(130)
    if result.unknown_words:
        err.print(f"[yellow]warning:[/yellow] unknown words ignored by {image_model.name}: {', '.join(result.unknown_words)}")
    _report(written, result, json_out)


def _write_partial(image_model, request, backend, stop, out):
    """Keep what a cancelled run had: the current sample, marked partial with its step."""
    from dlab.runtime.image import ImageResult, request_params
    from dlab.runtime.jobs import write_image_result
    from dlab.runtime.outputs import to_uint8

    params = request_params(image_model, request, backend)
    partial = ImageResult(images=to_uint8(stop.x.clamp(-1, 1).cpu().numpy()), params=params, unknown_words=[], seconds=0.0)
    return write_image_result(partial, out, partial_at=stop.step + 1)


def _report(written, result, json_out: bool) -> None:
    if json_out:
        payload = written.to_dict()
        if result is not None:
            payload.update(params=result.params, seconds=round(result.seconds, 3), unknown_words=result.unknown_words)
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
        return
    con = Console()
    if result is not None:
        p = result.params
        con.print(
            f"[green]✓[/green] {len(written.images)} image{'s' if len(written.images) != 1 else ''} in {result.seconds:.1f} s "
            f"({p['sampler']}, {p['steps']} steps, guidance {p['guidance']}, seed {p['seed']}, {p['backend']} {p['precision']} on {p['device']})"
        )
    for path in written.images:
        con.print(f"  {path}")
    for label, path in (("grid", written.grid), ("trace", written.trace), ("manifest", written.manifest)):
        if path:
            con.print(f"  {label}: {path}")


def run_noise(*, image: Path, at: str, schedule: Optional[str], seed: int, out: Path, json_out: bool) -> None:
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    from dlab.runtime.jobs import VIEW_SCALE, noise_strip
    from dlab.runtime.outputs import ensure_writable_dir, make_grid, slug, unique_stem, write_png
    from dlab.runtime.schedules import make_schedule

    try:
        timesteps = [int(x) for x in at.split(",") if x.strip()]
    except ValueError:
        raise BadInput(f"--at {at!r}: give comma-separated whole timesteps, e.g. 0,100,250,500,999") from None
    if not timesteps or any(not 0 <= t <= 999 for t in timesteps):
        raise BadInput(f"--at {at!r}: timesteps must be between 0 and 999")
    kind = schedule or _builtin_schedule_kind()
    if kind not in ("linear", "scaled_linear", "cosine"):
        raise BadInput(f"--schedule {kind!r}: choose linear, scaled_linear or cosine")
    try:
        with Image.open(image) as im:
            pixels = np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise BadFile(f"{image}: no such file") from None
    except (UnidentifiedImageError, OSError) as e:
        raise BadFile(f"{image}: not a readable image ({e.__class__.__name__})") from None
    out = ensure_writable_dir(out)
    sched = make_schedule(kind)
    frames = noise_strip(pixels, sched, timesteps, seed)
    scale = VIEW_SCALE if max(pixels.shape[:2]) <= 64 else 1
    path = out / f"{unique_stem(out, f'{slug(image.stem)}-noise')}.png"
    params = {"source": str(image), "timesteps": timesteps, "schedule": kind, "seed": seed, "view_scale": scale}
    write_png(path, make_grid(frames, cols=len(frames), scale=scale), params)
    if json_out:
        sys.stdout.write(json.dumps({"strip": str(path), **params}, indent=2) + "\n")
    else:
        Console().print(f"[green]✓[/green] forward process at t = {', '.join(map(str, timesteps))} ({kind}): {path}")


def _builtin_schedule_kind() -> str:
    from dlab.runtime.image import BUILTIN_IMAGE_MODEL

    cfg = BUILTIN_IMAGE_MODEL.with_suffix(".json")
    try:
        return json.loads(cfg.read_text())["schedule"]["kind"]
    except (OSError, KeyError, ValueError):
        return "cosine"


def run_train_image(*, minutes, steps, seed: int, batch: int, out: Path, precision: str, evaluate: bool,
                    snr_gamma: Optional[float] = None, aux_layout_weight: Optional[float] = None) -> None:
    import torch

    from dlab.runtime.outputs import ensure_writable_dir
    from dlab.runtime.model_card import record_evaluation, run_card_evaluation, write_card
    from dlab.runtime.train import TrainConfig, estimate_max_steps, train_image_model

    if minutes is None and steps is None:
        raise BadInput("give --minutes (a time budget) or --steps (an exact, reproducible step count)")
    if steps is not None and steps < 1:
        raise BadInput(f"--steps {steps}: must be at least 1")
    if minutes is not None and not 0 < minutes <= 24 * 60:
        raise BadInput(f"--minutes {minutes}: must be between 0 and 1440")
    if not 1 <= batch <= 1024:
        raise BadInput(f"--batch {batch}: must be between 1 and 1024")
    if precision not in ("fp32", "bf16"):
        raise BadInput(f"--precision {precision!r}: choose fp32 or bf16")
    if snr_gamma is not None and not snr_gamma >= 0:
        raise BadInput(f"--snr-gamma {snr_gamma}: must be positive (or 0 for plain MSE)")
    if aux_layout_weight is not None and not 0 <= aux_layout_weight <= 100:
        raise BadInput(f"--aux-layout-weight {aux_layout_weight}: must be between 0 and 100 (0 = off)")
    out = ensure_writable_dir(out)
    weighting = {} if snr_gamma is None else {"snr_gamma": snr_gamma or None}
    if aux_layout_weight is not None:
        weighting["aux_layout_weight"] = aux_layout_weight
    cfg = TrainConfig(seed=seed, batch_size=batch, max_steps=steps, precision=precision, **weighting)
    if steps is None:
        err.print(f"timing a few steps to fit {minutes:g} minutes…")
        steps, s_per_step = estimate_max_steps(cfg, minutes)
        err.print(f"{s_per_step:.3f} s/step → {steps} steps")
        cfg = cfg.model_copy(update={"max_steps": steps, "minutes": minutes})
    torch.manual_seed(seed)
    with Progress(
        TextColumn("[bold]training shapes"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn(), TimeRemainingColumn(), console=err,
    ) as bar:
        task = bar.add_task("train", total=steps, loss=float("nan"))
        result = train_image_model(
            cfg, out, progress=lambda step, total, loss, elapsed: bar.update(task, completed=step, loss=loss)
        )
    Console().print(f"[green]✓[/green] {result.steps} steps in {result.wall_s / 60:.1f} min, final loss "
                    f"{result.final_loss:.4f}: {result.weights}")
    if evaluate:
        err.print("evaluating prompt adherence (dlab's evaluator; see the model card)…")
        record_evaluation(result.weights, run_card_evaluation(result.weights, log=err.print))
    card = write_card(result.weights)
    Console().print(f"  model card: {card}")


def run_bench(*, quick: bool, out: Optional[Path], json_out: bool) -> None:
    from dlab.runtime.bench import run_bench as bench, write_report

    if out is not None:
        from dlab.runtime.outputs import ensure_writable_dir

        out = ensure_writable_dir(out)
    report = bench(log=lambda m: err.print(m), quick=quick)
    jpath, mpath = write_report(report, out)
    if json_out:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        Console().print(f"[green]✓[/green] report: {jpath}\n  {mpath}")
