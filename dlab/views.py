"""Rich renderings of planner results for the terminal. Views only: no probing, no maths."""

from __future__ import annotations

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from dlab.planner.doctor import DoctorReport
from dlab.planner.snapshot import GiB, HardwareSnapshot

NA = "N/A"
MARKS = {"ok": ("✓", "green"), "warn": ("!", "yellow"), "fail": ("✗", "red"), "skipped": ("–", "dim")}


def bytes2human(n: int | None, unit: str = "GiB") -> str:
    if n is None:
        return NA
    if n >= GiB or unit == "GiB":
        return f"{n / GiB:.1f} GiB"
    return f"{n / 1024**2:.0f} MiB"


def _or_na(v: object, fmt: str = "{}") -> str:
    return NA if v is None else fmt.format(v)


def machine_table(s: HardwareSnapshot) -> Group:
    parts = []
    title = "Machine" + (f" — {s.label}" if s.label else (f" — {s.hostname}" if s.hostname else ""))
    if s.gpus:
        t = Table(title="NVIDIA GPUs", title_justify="left", expand=False, pad_edge=False)
        for col in ("#", "name", "VRAM free / total", "cc", "PCIe now (max)", "power", "temp", "util"):
            t.add_column(col)
        for g in s.gpus:
            pcie = (
                f"gen{_or_na(g.pcie_gen_current)} x{_or_na(g.pcie_width_current)} "
                f"(gen{_or_na(g.pcie_gen_max)} x{_or_na(g.pcie_width_max)})"
            )
            t.add_row(
                str(g.index),
                (g.name or NA) + (f" [dim]({g.catalog_id})[/dim]" if g.catalog_id else ""),
                f"{bytes2human(g.memory_free_bytes)} / {bytes2human(g.memory_total_bytes)}",
                g.cc_str or NA,
                pcie,
                _or_na(g.power_limit_w, "{:.0f} W"),
                _or_na(g.temperature_c, "{} °C"),
                _or_na(g.utilization_pct, "{} %"),
            )
        parts.append(t)
    nv = s.nvidia
    if nv.nvml_available:
        cuda = "%d.%d" % nv.cuda_driver_version if nv.cuda_driver_version else NA
        driver = f"NVIDIA driver {nv.driver_version or NA}, CUDA ≤ {cuda}"
    else:
        driver = f"no NVIDIA GPU in use: {nv.reason or 'NVML unavailable'}"
    cpu = s.cpu
    isa = [n for n, on in (("AVX2", cpu.avx2), ("AVX-512", cpu.avx512),
                           ("AVX-512-bf16", cpu.avx512_bf16), ("AMX-bf16", cpu.amx_bf16),
                           ("NEON", cpu.neon)) if on]
    m, sw = s.memory, s.software
    lines = [
        ("GPU", driver),
        ("CPU", f"{cpu.model or NA} ({cpu.arch or NA}), {_or_na(cpu.physical_cores)} cores / "
                f"{_or_na(cpu.logical_cores)} threads, {_or_na(cpu.freq_max_mhz, '{:.0f} MHz')}; "
                f"{' '.join(isa) or 'no SIMD flags read'}"),
        ("RAM", f"{bytes2human(m.available_bytes)} available of {bytes2human(m.total_bytes)}; "
                f"swap {bytes2human(m.swap_free_bytes)} free of {bytes2human(m.swap_total_bytes)}"),
    ]
    for d in s.disks:
        lines.append((f"disk ({d.role})", f"{bytes2human(d.free_bytes)} free of {bytes2human(d.total_bytes)} at {d.path}"))
    torch = sw.torch
    torch_s = (
        f"{torch.version} ({torch.build}" + (f" {'%d.%d' % torch.cuda_version}" if torch.cuda_version else "") + ")"
        if torch.installed else "not installed"
    )
    ort = sw.onnxruntime
    ort_s = (
        ", ".join(f"{d.name} {d.version}" for d in ort.distributions)
        + (f" [{', '.join(p.replace('ExecutionProvider', '') for p in ort.providers)}]" if ort.providers else "")
        if ort.distributions else "not installed"
    )
    lines += [
        ("software", f"{sw.os or NA} {sw.os_release or ''}, Python {sw.python or NA}, dlab {sw.dlab or NA}"),
        ("torch", torch_s),
        ("onnxruntime", ort_s),
    ]
    kv = Table.grid(padding=(0, 2))
    kv.add_column(style="bold")
    kv.add_column()
    for k, v in lines:
        kv.add_row(k, v)
    parts.append(kv)
    return Group(Text(title, style="bold underline"), *parts)


def checks_table(report: DoctorReport) -> Table:
    t = Table(title="Checks", title_justify="left", show_header=False, box=None, pad_edge=False)
    t.add_column(width=1)
    t.add_column(style="bold", no_wrap=True)
    t.add_column()
    for c in report.checks:
        mark, colour = MARKS[c.status]
        body = Text(c.finding)
        if c.fix and c.status in ("warn", "fail"):
            body.append("\n→ " + c.fix, style="cyan")
        t.add_row(Text(mark, style=colour), c.id, body)
    return t


def tier_panel(report: DoctorReport) -> Panel:
    tm = report.tier
    body = Text()
    body.append("Tier: ", style="bold")
    body.append(tm.tier_name, style="bold magenta")
    if tm.next_tier_name:
        body.append(f"\nNext: {tm.next_tier_name}", style="bold")
        if tm.next_build:
            body.append(f" ({tm.next_build})")
        for u in tm.blockers:
            body.append(f"\n  • {u}")
    else:
        body.append("\nTop of the ladder.")
    return Panel(body, title="Upgrade ladder", expand=False)


def render_doctor(report: DoctorReport, console: Console) -> None:
    console.print(machine_table(report.snapshot))
    console.print()
    console.print(checks_table(report))
    console.print()
    console.print(tier_panel(report))
    counts = {k: sum(c.status == k for c in report.checks) for k in ("ok", "warn", "fail", "skipped")}
    console.print(
        f"{counts['ok']} ok, {counts['warn']} warnings, {counts['fail']} failed, {counts['skipped']} skipped"
    )


# ------------------------------------------------------------------------------------ plan
def _secs(s: float | None) -> str:
    if s is None:
        return NA
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"


def plan_table(p) -> Table:
    t = Table(show_header=False, box=None, pad_edge=False)
    t.add_column(style="bold")
    t.add_column()
    t.add_column(style="dim")
    res = f"{p.width}×{p.height}" if p.width else "–"
    backend = p.backend + (f" ({p.provider})" if p.provider else "")
    rows = [
        ("device", f"{p.device} {p.device_name}", p.why.get("device", "")),
        ("backend", backend, p.why.get("backend", "")),
        ("precision", p.precision, p.why.get("precision", "")),
        ("resolution", res, p.why.get("resolution", "")),
        ("batch", str(p.batch), p.why.get("batch", "")),
        ("offload", p.offload + (f", without {', '.join(p.drop_optional)}" if p.drop_optional else "")
         + (", VAE slicing" if p.vae_slicing else "") + (", VAE tiling" if p.vae_tiling else "") + (", fp16-safe VAE" if p.vae_fp16_fix else ""), p.why.get("offload", "")),
    ]
    for r in rows:
        t.add_row(*r)
    return t


def render_plan(p, console: Console) -> None:
    mark, style = ("✓", "green") if p.fits else ("✗", "red")
    console.print(Text.assemble((f"{mark} ", style), (p.model_name, "bold"), f" on this machine: {'fits' if p.fits else 'does not fit'}"))
    console.print(plan_table(p))
    mem = []
    if p.vram_gib is not None:
        mem.append(f"VRAM {p.vram_gib:.1f} GiB of {p.budget_gib:.1f} GiB free (peak allocated {p.peak_gib:.1f} GiB + CUDA context)")
    mem.append(f"RAM {p.ram_gib:.1f} GiB of {p.ram_budget_gib:.1f} GiB available")
    if p.seconds_per_image is not None:
        mem.append(f"{_secs(p.seconds_per_image)} per image" + (" (measured)" if p.measured else ""))
    if p.seconds_per_audio_second is not None:
        mem.append(f"{_secs(p.seconds_per_audio_second)} per second of audio")
    console.print("predicted: " + "; ".join(mem))
    console.print(Text(f"confidence: {p.confidence}", style="dim"))
    if p.nearest:
        console.print(f"nearest that fits: {p.nearest}")
    elif not p.fits:
        console.print("nothing smaller fits either: `dlab upgrade --goal " + p.model + "` names the cheapest change that does")


def render_upgrade(path, change, console: Console) -> None:
    console.print(Text.assemble(("Now: ", "bold"), (path.tier_name, "bold magenta")))
    if not path.steps:
        console.print("Top of the ladder: nothing above this machine.")
    for step in path.steps:
        price = f" (~${step.price_usd:,.0f})" if step.price_usd else ""
        body = Text()
        body.append(f"buy: {step.buy}{price}\n", style="bold")
        body.append(f"build: {step.build}\n")
        body.append("newly fits: " + (", ".join(step.newly_fits) or "nothing new") + "\n")
        if step.faster:
            body.append("faster: " + ", ".join(f"{w.model} ×{w.speedup:.1f}" for w in step.faster if w.speedup) + "\n")
        if step.still_not:
            body.append("still does not fit: " + ", ".join(step.still_not))
        console.print(Panel(body, title=step.tier_name, expand=False))
    if change is not None:
        if change.already:
            console.print(f"goal {change.goal}: already runs here ({change.plan.precision}, offload {change.plan.offload}).")
        elif change.met:
            price = f" (~${change.price_usd:,.0f})" if change.price_usd is not None else ""
            console.print(Text.assemble(("goal ", "bold"), f"{change.goal}: cheapest single change: ",
                                        (f"{change.change}{price}", "bold green"), f" — {change.why}"))
            for a in change.alternatives:
                console.print(f"  also: {a}")
        else:
            console.print(Text.assemble(("goal ", "bold"), f"{change.goal}: ", (change.why, "red")))
