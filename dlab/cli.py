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
) -> None:
    """Profile this machine, find what is broken, and place it on the upgrade ladder.

    Exit 0 when no check fails, 1 when one does, 2 on bad usage."""
    from dlab.planner.doctor import diagnose
    from dlab.planner.snapshot import load_snapshot

    if snapshot is not None:
        snap = load_snapshot(snapshot)
    else:
        from dlab.planner.probe import take_snapshot

        snap = take_snapshot()
    report = diagnose(snap)
    if json_out:
        sys.stdout.write(report.model_dump_json(indent=2) + "\n")
    else:
        from rich.console import Console

        from dlab.views import render_doctor

        render_doctor(report, Console())
    raise typer.Exit(report.exit_code(strict))


def main() -> None:
    try:
        app()  # standalone: click prints usage errors itself and exits 2
    except DlabError as e:
        print(f"dlab: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
