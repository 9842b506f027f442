"""What to buy next: the path up the tier ladder, and the cheapest single change that meets a goal.

A ladder step is planned on the tier's representative machine (profiles/machines/): each catalog
workload (every model at its native size, batch 1) either newly fits there, runs faster than here
(speed-up = the previous step's s/image ÷ this step's: what this purchase buys), or still does not
fit. A second GPU does not speed up one job (VRAM and compute are not pooled); it runs two at once. A goal
(`MODEL@WxH[xBATCH]`) is met by trying every single change — more RAM, or one GPU from the
catalog in place of the current one (a second GPU never adds VRAM to one job) — and keeping the
cheapest that makes the plan fit.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, Field

from dlab.errors import BadInput
from dlab.planner.plan import Plan, find_model, make_plan, parse_resolution
from dlab.planner.snapshot import GiB, GpuInfo, HardwareSnapshot, load_snapshot
from dlab.planner.tiers import match_tier
from dlab.planner.fit import costs
from dlab.profiles import example_machines, gpu_catalog, model_catalog, tiers

TIER_MACHINE = {"appetizer": "appetizer", "main-course": "main_course", "dessert": "dessert"}
RAM_SIZES_GB = (32, 64, 128, 256)


class Workload(BaseModel):
    model: str
    fits_here: bool
    fits_there: bool
    seconds_here: float | None = None
    seconds_there: float | None = None
    speedup: float | None = None
    there: str = ""  # the configuration on the step's machine


class LadderStep(BaseModel):
    tier_id: str
    tier_name: str
    buy: str
    build: str
    price_usd: float | None = None
    newly_fits: list[str] = Field(default_factory=list)
    faster: list[Workload] = Field(default_factory=list)
    still_not: list[str] = Field(default_factory=list)


class UpgradePath(BaseModel):
    tier_id: str
    tier_name: str
    steps: list[LadderStep]


class GoalChange(BaseModel):
    goal: str
    met: bool  # True when the machine already meets it or a single change does
    already: bool = False
    change: str | None = None
    price_usd: float | None = None
    plan: Plan | None = None
    why: str = ""
    alternatives: list[str] = Field(default_factory=list)


# ------------------------------------------------------------------------------------ goal
_GOAL = re.compile(r"^\s*([a-z0-9.\-]+)\s*(?:@\s*(\d+\s*[x×]\s*\d+)(?:\s*[x×]\s*(\d+))?)?\s*$", re.I)


def parse_goal(text: str) -> tuple[str, tuple[int, int] | None, int | None]:
    m = _GOAL.match(text or "")
    if not m:
        raise BadInput(f"--goal {text!r}: expected MODEL@WIDTHxHEIGHT[xBATCH], e.g. flux-dev@1024x1024x2")
    model = find_model(m.group(1)).id
    res = parse_resolution(m.group(2)) if m.group(2) else None
    batch = int(m.group(3)) if m.group(3) else None
    if batch is not None and not 1 <= batch <= 64:
        raise BadInput(f"--goal {text!r}: batch must be between 1 and 64")
    return model, res, batch


# ------------------------------------------------------------------------------------ ladder
def _workload_plan(model_id: str, snap: HardwareSnapshot) -> Plan:
    return make_plan(model_id, snap, batch=1)


def _seconds(p: Plan) -> float | None:
    return p.seconds_per_image if p.seconds_per_image is not None else p.seconds_per_audio_second


def upgrade_path(snap: HardwareSnapshot) -> UpgradePath:
    ladder = tiers()
    current = match_tier(snap)
    machines = example_machines()
    here = {m.id: _workload_plan(m.id, snap) for m in model_catalog().model}
    steps = []
    for tier in ladder.tier[ladder.index(current.tier_id) + 1:]:
        path = machines.get(TIER_MACHINE.get(tier.id, ""))
        if path is None:
            continue
        there_snap = load_snapshot(path)
        step = LadderStep(tier_id=tier.id, tier_name=tier.name, buy=tier.build.upgrade or tier.build.gpu,
                          build=f"{tier.build.gpu}, {tier.build.ram_gb} GB RAM, {tier.build.cpu}",
                          price_usd=tier.build.price_usd)
        there = {model_id: _workload_plan(model_id, there_snap) for model_id in here}
        for model_id, p_here in here.items():
            p_there = there[model_id]
            s_here, s_there = _seconds(p_here), _seconds(p_there)
            w = Workload(model=model_id, fits_here=p_here.fits, fits_there=p_there.fits, seconds_here=s_here,
                         seconds_there=s_there, there=f"{p_there.precision}, offload {p_there.offload}, batch {p_there.batch}")
            if p_there.fits and not p_here.fits:
                step.newly_fits.append(model_id)
            elif p_there.fits and p_here.fits and s_here and s_there:
                w.speedup = s_here / s_there
                if w.speedup >= 1.05:  # same speed is not a reason to buy
                    step.faster.append(w)
            elif not p_there.fits:
                step.still_not.append(model_id)
        steps.append(step)
        here = there  # the next step starts from this one
    return UpgradePath(tier_id=current.tier_id, tier_name=current.tier_name, steps=steps)


# ------------------------------------------------------------------------------------ cheapest change
def _with_ram(snap: HardwareSnapshot, gb: int) -> HardwareSnapshot:
    mem = snap.memory
    used = (mem.total_bytes or 0) - (mem.available_bytes or mem.total_bytes or 0)
    total = int(gb * GiB * 0.97)  # DIMMs are binary GB; MemTotal is ~3 % under (firmware, kernel)
    return snap.model_copy(update={"memory": mem.model_copy(update={"total_bytes": total, "available_bytes": total - used})})


def _with_gpu(snap: HardwareSnapshot, spec) -> HardwareSnapshot:
    total = int(spec.vram_gb * GiB)  # a "24 GB" card has 24 GiB
    used = int(0.4 * GiB)  # a desktop's share, as on the example machines
    gpu = GpuInfo(index=0, name=spec.name, memory_total_bytes=total, memory_free_bytes=total - used,
                  memory_used_bytes=used, compute_capability=spec.cc, pcie_gen_max=4, pcie_width_max=16)
    others = [g.model_copy(update={"index": i + 1}) for i, g in enumerate(snap.gpus[1:])]
    nvidia = snap.nvidia.model_copy(update={"gpus": [gpu, *others], "nvml_available": True})
    return snap.model_copy(update={"nvidia": nvidia})


MAX_SECONDS = 600.0  # a plan slower than 10 min per image (or per second of audio) does not meet a goal


def _usable(p: Plan, max_seconds: float) -> bool:
    s = _seconds(p)
    return p.fits and (s is None or s <= max_seconds)


def cheapest_change(snap: HardwareSnapshot, model_id: str, resolution: tuple[int, int] | None,
                    batch: int | None, max_seconds: float = MAX_SECONDS) -> GoalChange:
    goal = model_id + (f"@{resolution[0]}x{resolution[1]}" if resolution else "") + (f"x{batch}" if batch else "")
    now = make_plan(model_id, snap, resolution=resolution, batch=batch)
    if _usable(now, max_seconds):
        return GoalChange(goal=goal, met=True, already=True, plan=now, why="this machine already runs it")
    price_gb = costs().prices.ram_usd_per_gb
    options: list[tuple[float, str, Plan]] = []
    have_gb = (snap.memory.total_bytes or 0) / GiB / 0.97  # back to the label
    for gb in RAM_SIZES_GB:
        if gb > have_gb + 1:
            p = make_plan(model_id, _with_ram(snap, gb), resolution=resolution, batch=batch)
            if _usable(p, max_seconds):
                added = gb - round(have_gb)
                options.append((added * price_gb, f"RAM to {gb} GB (+{added} GB)", p))
                break  # larger RAM only costs more
    current = snap.gpus[0] if snap.gpus else None
    for spec in gpu_catalog().gpu:
        if spec.launch_price_usd is None:
            continue
        if current is not None and current.memory_total_bytes and spec.vram_gb * GiB <= current.memory_total_bytes * 1.01:
            continue  # not more VRAM than now: no single-GPU gain for fitting
        p = make_plan(model_id, _with_gpu(snap, spec), resolution=resolution, batch=batch)
        if _usable(p, max_seconds):
            what = (f"replace the {current.name or 'GPU ' + str(current.index)} with an {spec.name}" if current
                    else f"add an {spec.name}")
            options.append((spec.launch_price_usd, what, p))
    if not options:
        return GoalChange(goal=goal, met=False, plan=now,
                          why=f"no single change (RAM, or one catalog GPU) runs it within {max_seconds / 60:g} min per image; "
                              "see the ladder for combined upgrades")
    options.sort(key=lambda o: o[0])
    price, change, plan = options[0]
    return GoalChange(
        goal=goal, met=True, change=change, price_usd=price, plan=plan,
        why=(f"cheapest of {len(options)} single changes that fit: {plan.device_name}, {plan.precision}, "
             f"offload {plan.offload}, batch {plan.batch}, ~{_seconds(plan):.1f} s per "
             + ("second of audio" if plan.kind == "voice" else "image")),
        alternatives=[f"{c} (~${p:,.0f})" for p, c, _ in options[1:4]],
    )
