"""The `dlab` command line. Thin: parse, call planner/runtime, render. Errors a user can cause are
`DlabError`s, printed as one line with exit code 2."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from dlab.errors import DlabError

app = typer.Typer(
    name="dlab",
    help="A diffusion lab for your own workstation: know the machine, plan, generate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """dlab: know the machine, plan, generate."""


@app.command()
def doctor(
    json_out: bool = typer.Option(False, "--json", help="Print the report (snapshot, checks, tier) as JSON."),
    snapshot: Optional[Path] = typer.Option(
        None, "--snapshot", metavar="FILE", help="Read a saved snapshot instead of probing this machine."
    ),
    strict: bool = typer.Option(False, "--strict", help="Warnings fail too (exit 1)."),
    fresh: bool = typer.Option(
        False, "--fresh", help="Re-run the ONNX Runtime provider checks instead of reusing the cached result."
    ),
) -> None:
    """Profile this machine, find what is broken, and place it on the upgrade ladder.

    Exit 0 when no check fails, 1 when one does, 2 on bad usage."""
    from dlab.planner.doctor import diagnose
    from dlab.planner.snapshot import load_snapshot

    if snapshot is not None:
        snap = load_snapshot(snapshot)
    else:
        from dlab.planner.probe import take_snapshot

        snap = take_snapshot(fresh=fresh)
    report = diagnose(snap)
    if json_out:
        sys.stdout.write(report.model_dump_json(indent=2) + "\n")
    else:
        from rich.console import Console

        from dlab.views import render_doctor

        render_doctor(report, Console())
    raise typer.Exit(report.exit_code(strict))


generate_app = typer.Typer(help="Generate images (and, later, voices).", no_args_is_help=True)
train_app = typer.Typer(help="Train dlab's built-in models from data dlab generates.", no_args_is_help=True)
app.add_typer(generate_app, name="generate")
app.add_typer(train_app, name="train")


def _parse_trace(trace: int) -> int:
    from dlab.errors import BadInput

    if trace and not 2 <= trace <= 64:
        raise BadInput(f"--trace {trace}: give between 2 and 64 frames")
    return trace


@generate_app.command("image")
def generate_image(
    prompt: str = typer.Argument(..., help='What to draw, e.g. "a red circle on a black background".'),
    negative: str = typer.Option("", "--negative", help="Negative prompt (the unconditional branch of guidance)."),
    sampler: str = typer.Option("ddim", help="ddim, ddpm or dpmpp_2m."),
    steps: int = typer.Option(50, help="Denoising steps (1–1000)."),
    guidance: float = typer.Option(3.0, help="Classifier-free guidance scale; 1 = conditional only."),
    guidance_rescale: float = typer.Option(0.0, "--guidance-rescale", help="Guidance rescale φ (0–1)."),
    guidance_interval: Optional[str] = typer.Option(
        None, "--guidance-interval", metavar="START:END",
        help="Guide only on timesteps START ≤ t < END (of 1000), plain conditional elsewhere, e.g. 0:700; `all` guides every step. Default: the model's recommendation (shapes: 0:700), else every step.",
    ),
    eta: float = typer.Option(0.0, help="DDIM η: 0 deterministic, 1 DDPM-like."),
    spacing: str = typer.Option("trailing", help="Timestep spacing: trailing, leading or linspace."),
    seed: Optional[int] = typer.Option(None, help="Random seed (default: a fresh one, recorded)."),
    batch: Optional[int] = typer.Option(None, help="Images to generate at once (default: the plan's batch for this machine)."),
    out: Path = typer.Option(Path("outputs"), help="Folder to write into."),
    model: Optional[Path] = typer.Option(None, help="A .safetensors checkpoint (default: the built-in shapes model)."),
    device: str = typer.Option("auto", help="auto (the plan's), cpu or cuda[:N]."),
    precision: str = typer.Option("auto", help="auto (the plan's), fp32, bf16 or fp16."),
    backend: str = typer.Option("auto", help="auto (the plan's: the faster in `dlab bench`), eager or onnx."),
    force: bool = typer.Option(False, "--force", help="Run settings the plan says will not fit."),
    trace: int = typer.Option(0, help="Also save the reverse process as a strip of N frames."),
    json_out: bool = typer.Option(False, "--json", help="Print what was written as JSON."),
) -> None:
    """Text to image: writes one PNG per image and a grid, each carrying its parameters.

    Unset device, precision, backend and batch come from `dlab plan shapes` for this machine."""
    from dlab.commands import run_generate_image

    run_generate_image(
        prompt=prompt, negative=negative, sampler=sampler, steps=steps, guidance=guidance,
        guidance_rescale=guidance_rescale, guidance_interval=guidance_interval, eta=eta, spacing=spacing, seed=seed,
        batch=batch, out=out,
        model=model, device=device, precision=precision, trace=_parse_trace(trace), json_out=json_out,
        backend=backend, force=force,
    )


@app.command()
def noise(
    image: Path = typer.Argument(..., help="An image file (PNG, JPEG, ...)."),
    at: str = typer.Option("0,100,250,500,999", help="Comma-separated timesteps of the forward process."),
    schedule: Optional[str] = typer.Option(None, help="linear, scaled_linear or cosine (default: the built-in model's)."),
    seed: int = typer.Option(0, help="Seed of the noise."),
    out: Path = typer.Option(Path("outputs"), help="Folder to write into."),
    json_out: bool = typer.Option(False, "--json", help="Print what was written as JSON."),
) -> None:
    """Save the forward process q(x_t | x_0) of IMAGE as a strip: clean → noise."""
    from dlab.commands import run_noise

    run_noise(image=image, at=at, schedule=schedule, seed=seed, out=out, json_out=json_out)


@train_app.command("image")
def train_image(
    minutes: Optional[float] = typer.Option(None, help="Time budget; steps are derived from a short timing run."),
    steps: Optional[int] = typer.Option(None, help="Exact number of steps (reproducible); overrides --minutes."),
    seed: int = typer.Option(0),
    batch: int = typer.Option(24, help="Images per training step."),
    out: Path = typer.Option(Path("runs/shapes"), help="Folder for shapes.safetensors, shapes.json and the model card."),
    precision: str = typer.Option("fp32", help="fp32 or bf16 (autocast)."),
    evaluate: bool = typer.Option(True, help="Score the trained model with dlab's evaluator and put it in the model card."),
    snr_gamma: Optional[float] = typer.Option(
        None, "--snr-gamma", help="min-SNR-γ loss weighting (default 5; 0 = plain MSE on the prediction target)."
    ),
    aux_layout_weight: Optional[float] = typer.Option(
        None, "--aux-layout-weight",
        help="Weight of the auxiliary size-and-centre loss on the U-Net bottleneck (default 0.02; 0 = off).",
    ),
) -> None:
    """Train the built-in text-to-image model "shapes" from scratch on data dlab generates."""
    from dlab.commands import run_train_image

    run_train_image(minutes=minutes, steps=steps, seed=seed, batch=batch, out=out, precision=precision, evaluate=evaluate,
                    snr_gamma=snr_gamma, aux_layout_weight=aux_layout_weight)


@app.command()
def bench(
    quick: bool = typer.Option(False, "--quick", help="Fewer batches and repeats (about a minute)."),
    out: Optional[Path] = typer.Option(None, help="Folder for the report (default: dlab's data dir, where the planner reads it)."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Measure this machine: step time per backend × precision × batch, ORT vs eager, CFG, samplers,
    predicted vs measured memory. The planner uses the latest report."""
    from dlab.commands import run_bench

    run_bench(quick=quick, out=out, json_out=json_out)


def _load_snapshot(snapshot: Optional[Path]):
    from dlab.planner.snapshot import load_snapshot

    if snapshot is not None:
        return load_snapshot(snapshot)
    from dlab.planner.probe import take_snapshot

    return take_snapshot()


@app.command()
def plan(
    model: str = typer.Argument(..., help="A catalog model id: shapes, sd15, sd21, sdxl, sd35-medium, sd35-large, flux-schnell, flux-dev, tortoise."),
    snapshot: Optional[Path] = typer.Option(None, "--snapshot", metavar="FILE", help="Plan a saved snapshot instead of this machine."),
    resolution: Optional[str] = typer.Option(None, help="WIDTHxHEIGHT (default: the model's native size)."),
    batch: Optional[int] = typer.Option(None, help="Images at once (default: the largest that fits, up to 8)."),
    emit: Optional[str] = typer.Option(None, help="Print settings for another tool: comfyui, a1111, invokeai or diffusers."),
    json_out: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
) -> None:
    """The backend, precision, resolution, batch and offload that fit this machine, and why."""
    from dlab.planner.plan import load_bench, make_plan, parse_resolution

    res = parse_resolution(resolution) if resolution is not None else None
    if emit is not None:
        from dlab.planner.emit import EMITTERS

        if emit not in EMITTERS:
            from dlab.errors import BadInput

            raise BadInput(f"--emit {emit!r}: choose one of {', '.join(EMITTERS)}")
    snap = _load_snapshot(snapshot)
    p = make_plan(model, snap, resolution=res, batch=batch, bench=load_bench() if snapshot is None else None)
    if emit is not None:
        from dlab.planner.emit import emit_plan

        sys.stdout.write(emit_plan(p, emit) + "\n")
    elif json_out:
        sys.stdout.write(p.model_dump_json(indent=2) + "\n")
    else:
        from rich.console import Console

        from dlab.views import render_plan

        render_plan(p, Console())
    raise typer.Exit(0 if p.fits else 1)


@app.command()
def upgrade(
    snapshot: Optional[Path] = typer.Option(None, "--snapshot", metavar="FILE", help="Start from a saved snapshot instead of this machine."),
    goal: Optional[str] = typer.Option(None, help="MODEL@WxH[xBATCH], e.g. flux-dev@1024x1024: the cheapest single change that runs it."),
    json_out: bool = typer.Option(False, "--json", help="Print the path as JSON."),
) -> None:
    """The path up the tier ladder from this machine: what each step costs and what it unlocks."""
    from dlab.planner.upgrade import cheapest_change, parse_goal, upgrade_path

    parsed = parse_goal(goal) if goal is not None else None
    snap = _load_snapshot(snapshot)
    path = upgrade_path(snap)
    change = cheapest_change(snap, *parsed) if parsed else None
    if json_out:
        import json

        out = {"path": path.model_dump(mode="json"), "goal": change.model_dump(mode="json") if change else None}
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
    else:
        from rich.console import Console

        from dlab.views import render_upgrade

        render_upgrade(path, change, Console())
    raise typer.Exit(0 if change is None or change.met else 1)


def main() -> None:
    try:
        app()  # standalone: click prints usage errors itself and exits 2
    except DlabError as e:
        print(f"dlab: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
