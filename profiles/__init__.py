"""dlab's data: the tier ladder, the GPU catalog and example machines, as TOML/JSON validated on load.

Code holds formulas; figures live here with a source for each. A file that fails validation raises
`ProfileError` naming the file and the field, so a bad edit is one clear line, not a traceback.
"""

from __future__ import annotations

import re
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dlab.errors import ProfileError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PROFILES_DIR = Path(__file__).resolve().parent
MACHINES_DIR = PROFILES_DIR / "machines"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------------------------------- tiers
class TierRequirements(_Strict):
    min_gpus: int = Field(0, ge=0, description="GPUs that each have at least min_vram_gib")
    min_vram_gib: float = Field(0.0, ge=0)
    min_ram_gib: float = Field(0.0, ge=0)
    min_physical_cores: int = Field(0, ge=0)


class TierBuild(_Strict):
    gpu: str
    ram_gb: int
    cpu: str
    price_usd: float | None = None
    upgrade: str | None = None


class Tier(_Strict):
    id: str
    name: str
    summary: str
    requirements: TierRequirements
    build: TierBuild
    sources: dict[str, str]

    @model_validator(mode="after")
    def _sourced(self) -> Tier:
        if "requirements" not in self.sources:
            raise ValueError("sources.requirements is missing: say where the requirements come from")
        if self.build.price_usd is not None and "price_usd" not in self.sources:
            raise ValueError("build.price_usd has no sources.price_usd")
        return self


class BuiltinWorkload(_Strict):
    min_ram_available_gib: float = Field(gt=0)
    min_disk_free_gib: float = Field(gt=0)
    sources: dict[str, str]

    @model_validator(mode="after")
    def _sourced(self) -> BuiltinWorkload:
        missing = {"min_ram_available_gib", "min_disk_free_gib"} - set(self.sources)
        if missing:
            raise ValueError(f"no source for {', '.join(sorted(missing))}")
        return self


class TierLadder(_Strict):
    schema_version: int
    tier: list[Tier] = Field(min_length=1)
    builtin_workload: BuiltinWorkload

    @field_validator("tier")
    @classmethod
    def _ordered(cls, tiers: list[Tier]) -> list[Tier]:
        ids = [t.id for t in tiers]
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate tier ids in {ids}")
        if tiers[0].requirements != TierRequirements():
            raise ValueError("the first tier is the floor and must have no requirements")
        return tiers

    def index(self, tier_id: str) -> int:
        return [t.id for t in self.tier].index(tier_id)


# ------------------------------------------------------------------------------------------ GPUs
_CC = re.compile(r"^\d+\.\d+$")


class GpuSources(_Strict):
    specs: str
    tensor: str
    compute_capability: str
    price: str


class GpuSpec(_Strict):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]*$")
    name: str
    match: list[str] = Field(min_length=1)
    architecture: str
    compute_capability: str
    vram_gb: float = Field(gt=0)
    memory_bandwidth_gbs: float = Field(gt=0)
    fp16_tensor_tflops: float = Field(gt=0)
    bf16_tensor_tflops: float = Field(ge=0)
    fp32_tflops: float = Field(gt=0)
    tdp_w: float = Field(gt=0)
    launch_price_usd: float | None = Field(None, gt=0)
    launch_date: str = Field(pattern=r"^\d{4}-\d{2}$")
    notes: str = ""
    sources: GpuSources

    @field_validator("compute_capability")
    @classmethod
    def _cc(cls, v: str) -> str:
        if not _CC.match(v):
            raise ValueError(f"compute capability {v!r} is not of the form MAJOR.MINOR")
        return v

    @property
    def cc(self) -> tuple[int, int]:
        major, minor = self.compute_capability.split(".")
        return int(major), int(minor)


class GpuCatalog(_Strict):
    schema_version: int
    gpu: list[GpuSpec] = Field(min_length=1)

    @field_validator("gpu")
    @classmethod
    def _unique(cls, gpus: list[GpuSpec]) -> list[GpuSpec]:
        seen: set[str] = set()
        for g in gpus:
            if g.id in seen:
                raise ValueError(f"duplicate gpu id {g.id!r}")
            seen.add(g.id)
        return gpus

    def get(self, gpu_id: str) -> GpuSpec | None:
        return next((g for g in self.gpu if g.id == gpu_id), None)

    def match(self, nvml_name: str, vram_bytes: int | None = None) -> GpuSpec | None:
        """The entry for a card as NVML names it, or None (dlab then uses NVML's own figures).

        A match string must stand as whole words in the name, and the name may not carry a
        variant word the match lacks ("RTX 3080" does not match "RTX 3080 Ti", nor "RTX 4090
        Laptop GPU"); the longest match wins; cards sold with two memory sizes under one name
        (RTX 4060 Ti 8/16 GB) are told apart by VRAM."""
        name = " ".join(nvml_name.lower().split())
        best: list[tuple[int, GpuSpec]] = []
        for g in self.gpu:
            n = max((len(m) for m in g.match if _matches(m.lower(), name)), default=0)
            if n:
                best.append((n, g))
        if not best:
            return None
        top = max(n for n, _ in best)
        tied = [g for n, g in best if n == top]
        if len(tied) == 1 or vram_bytes is None:
            return tied[0]
        vram_gb = vram_bytes / 1e9
        return min(tied, key=lambda g: abs(g.vram_gb - vram_gb))


_VARIANT_WORDS = {"ti", "super", "d", "laptop", "mobile", "max-q", "nvl", "pcie", "sxm", "sxm4", "sxm5"}


def _matches(pattern: str, name: str) -> bool:
    m = re.search(r"(?<![a-z0-9])" + re.escape(pattern) + r"(?![a-z0-9])", name)
    if not m:
        return False
    extra = set(re.findall(r"[a-z0-9-]+", name[m.end():])) - set(pattern.split())
    return not (extra & _VARIANT_WORDS)


# ---------------------------------------------------------------------------------------- loading
def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ProfileError(f"{path}: no such file") from None
    except tomllib.TOMLDecodeError as e:
        raise ProfileError(f"{path}: not valid TOML ({e})") from None


def _field_path(loc: tuple[Any, ...], data: dict[str, Any]) -> str:
    """`gpu.3.vram_gb` → `gpu[3] (rtx-4090).vram_gb`: name the entry a person would look for."""
    parts: list[str] = []
    node: Any = data
    for key in loc:
        if isinstance(key, int):
            label = f"[{key}]"
            if isinstance(node, list) and key < len(node) and isinstance(node[key], dict):
                ident = node[key].get("id")
                if ident:
                    label += f" ({ident})"
            parts[-1:] = [(parts[-1] if parts else "") + label]
        else:
            parts.append(str(key))
        try:
            node = node[key]
        except (KeyError, IndexError, TypeError):
            node = None
    return ".".join(parts)


def validate_profile(model: type[BaseModel], data: dict[str, Any], path: Path) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = _field_path(tuple(err["loc"]), data) or "(top level)"
        more = f" (and {len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
        raise ProfileError(f"{path}: field {where}: {err['msg']}{more}") from None


def load_tiers(path: Path | None = None) -> TierLadder:
    path = path or PROFILES_DIR / "tiers.toml"
    return validate_profile(TierLadder, _read_toml(path), path)


def load_gpu_catalog(path: Path | None = None) -> GpuCatalog:
    path = path or PROFILES_DIR / "gpus.toml"
    return validate_profile(GpuCatalog, _read_toml(path), path)


@lru_cache(maxsize=1)
def tiers() -> TierLadder:
    return load_tiers()


@lru_cache(maxsize=1)
def gpu_catalog() -> GpuCatalog:
    return load_gpu_catalog()


def example_machines() -> dict[str, Path]:
    """The example snapshots shipped in profiles/machines/, by name."""
    return {p.stem: p for p in sorted(MACHINES_DIR.glob("*.json"))}
