"""Place a machine on the upgrade ladder (profiles/tiers.toml).

A machine's tier is the highest tier whose every requirement it meets. VRAM requirements are per
GPU: "2 GPUs of ≥ 23 GiB" counts the cards that each have 23 GiB, never the sum across cards.
"""

from __future__ import annotations

from pydantic import BaseModel

from dlab.planner.snapshot import GiB, HardwareSnapshot
from dlab.profiles import Tier, TierLadder, tiers


class Unmet(BaseModel):
    requirement: str
    need: str
    have: str

    def __str__(self) -> str:
        return f"{self.requirement}: need {self.need}, have {self.have}"


class TierMatch(BaseModel):
    tier_id: str
    tier_name: str
    next_tier_id: str | None
    next_tier_name: str | None
    blockers: list[Unmet]
    next_build: str | None = None


def _gib(n: float) -> str:
    return f"{n:g} GiB"


def unmet_requirements(snapshot: HardwareSnapshot, tier: Tier) -> list[Unmet]:
    req = tier.requirements
    unmet: list[Unmet] = []
    if req.min_gpus:
        big = [
            g for g in snapshot.gpus if g.total_gib is not None and g.total_gib >= req.min_vram_gib
        ]
        if len(big) < req.min_gpus:
            sizes = ", ".join(
                f"{g.name or 'GPU %d' % g.index} {g.total_gib:.1f} GiB"
                if g.total_gib is not None
                else f"{g.name or 'GPU %d' % g.index} (VRAM unknown)"
                for g in snapshot.gpus
            )
            have = f"{len(big)} ({sizes})" if snapshot.gpus else "no NVIDIA GPU"
            need = f"{req.min_gpus} GPU{'s' if req.min_gpus > 1 else ''} with ≥ {_gib(req.min_vram_gib)} each"
            unmet.append(Unmet(requirement="GPU", need=need, have=have))
    if req.min_ram_gib:
        total = snapshot.memory.total_bytes
        if total is None or total / GiB < req.min_ram_gib:
            have = "unknown" if total is None else f"{total / GiB:.1f} GiB"
            unmet.append(Unmet(requirement="RAM", need=f"≥ {_gib(req.min_ram_gib)}", have=have))
    if req.min_physical_cores:
        cores = snapshot.cpu.physical_cores
        if cores is None or cores < req.min_physical_cores:
            unmet.append(
                Unmet(
                    requirement="CPU cores",
                    need=f"≥ {req.min_physical_cores} physical",
                    have="unknown" if cores is None else str(cores),
                )
            )
    return unmet


def match_tier(snapshot: HardwareSnapshot, ladder: TierLadder | None = None) -> TierMatch:
    ladder = ladder or tiers()
    met = [t for t in ladder.tier if not unmet_requirements(snapshot, t)]
    # the floor has no requirements, so `met` is never empty
    current = met[-1]
    i = ladder.index(current.id)
    nxt = ladder.tier[i + 1] if i + 1 < len(ladder.tier) else None
    return TierMatch(
        tier_id=current.id,
        tier_name=current.name,
        next_tier_id=nxt.id if nxt else None,
        next_tier_name=nxt.name if nxt else None,
        blockers=unmet_requirements(snapshot, nxt) if nxt else [],
        next_build=(
            f"{nxt.build.gpu}, {nxt.build.ram_gb} GB RAM, {nxt.build.cpu}" if nxt else None
        ),
    )
