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
