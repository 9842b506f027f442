"""dlab's data: the tier ladder, the GPU and model catalogs and example machines, as TOML/JSON
validated on load.

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


def _unique_ids(items: list, what: str) -> list:
    seen: set[str] = set()
    for item in items:
        if item.id in seen:
            raise ValueError(f"duplicate {what} id {item.id!r}")
        seen.add(item.id)
    return items


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
        return _unique_ids(gpus, "gpu")

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


# ---------------------------------------------------------------------------------------- models
ROLES = ("text_encoder", "denoiser", "vae", "vocoder", "autoregressive", "other")
OFFLOADS = ("none", "model", "sequential")


class ModelComponent(_Strict):
    name: str
    role: str
    params: int = Field(gt=0)
    optional: bool = False
    offloadable: bool = True
    gflops_per_step: float | None = Field(None, gt=0, description="denoiser: one image, native size, one step")
    hidden_size: int | None = Field(None, gt=0)
    layers: int | None = Field(None, gt=0)
    source: str = Field(min_length=1)
    notes: str = ""

    @field_validator("role")
    @classmethod
    def _role(cls, v: str) -> str:
        if v not in ROLES:
            raise ValueError(f"role {v!r} is not one of {', '.join(ROLES)}")
        return v


class PublishedFigure(_Strict):
    what: str
    value: float = Field(gt=0)
    precision: str | None = None
    resolution: tuple[int, int] | None = None
    batch: int = Field(1, ge=1)
    offload: str = "none"
    gpu: str | None = None
    steps: int | None = Field(None, ge=1)
    outcome: str = "ran"
    # "exact": a measurement (dlab must be within ±20 %); "lower": at least this much; "upper": a card
    # of this size is enough (a tool's stated minimum): dlab's predicted need must not exceed it.
    bound: str = "exact"
    source: str = Field(min_length=1)
    notes: str = ""

    @model_validator(mode="after")
    def _check(self) -> PublishedFigure:
        if self.bound not in ("exact", "lower", "upper"):
            raise ValueError(f"bound {self.bound!r} is not 'exact', 'lower' or 'upper'")
        if self.offload not in OFFLOADS:
            raise ValueError(f"offload {self.offload!r} is not one of {', '.join(OFFLOADS)}")
        if self.outcome not in ("ran", "oom"):
            raise ValueError(f"outcome {self.outcome!r} is not 'ran' or 'oom'")
        return self


class ModelSpec(_Strict):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]*$")
    name: str
    kind: str
    space: str
    native_resolution: tuple[int, int] | None = None
    native_seconds: float | None = Field(None, gt=0)
    sample_rate: int | None = Field(None, gt=0)
    latent_channels: int | None = Field(None, gt=0)
    downsample: int = Field(1, ge=1)
    patch_size: int = Field(1, ge=1)
    denoiser_kind: str
    uses_cfg: bool
    vae_upcast: bool = False  # the VAE is decoded in fp32 when the pipeline runs in fp16
    default_steps: int = Field(ge=1)
    native_dtype: str
    license: str = ""
    source: str = Field(min_length=1)
    notes: str = ""
    component: list[ModelComponent] = Field(min_length=1)
    published: list[PublishedFigure] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        if self.kind not in ("image", "voice"):
            raise ValueError(f"kind {self.kind!r} is not 'image' or 'voice'")
        if self.kind == "image" and self.native_resolution is None:
            raise ValueError("an image model needs native_resolution")
        if not any(c.role == "denoiser" for c in self.component):
            raise ValueError("a model needs a component with role = 'denoiser'")
        return self

    @property
    def denoiser(self) -> ModelComponent:
        return next(c for c in self.component if c.role == "denoiser")

    @property
    def params(self) -> int:
        return sum(c.params for c in self.component)


class ModelCatalog(_Strict):
    schema_version: int
    model: list[ModelSpec] = Field(min_length=1)

    @field_validator("model")
    @classmethod
    def _unique(cls, models: list[ModelSpec]) -> list[ModelSpec]:
        return _unique_ids(models, "model")

    def get(self, model_id: str) -> ModelSpec | None:
        return next((m for m in self.model if m.id == model_id.lower()), None)

    @property
    def ids(self) -> list[str]:
        return [m.id for m in self.model]


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


def load_model_catalog(path: Path | None = None) -> ModelCatalog:
    path = path or PROFILES_DIR / "models.toml"
    return validate_profile(ModelCatalog, _read_toml(path), path)


@lru_cache(maxsize=1)
def model_catalog() -> ModelCatalog:
    return load_model_catalog()


@lru_cache(maxsize=1)
def tiers() -> TierLadder:
    return load_tiers()


@lru_cache(maxsize=1)
def gpu_catalog() -> GpuCatalog:
    return load_gpu_catalog()


def example_machines() -> dict[str, Path]:
    """The example snapshots shipped in profiles/machines/, by name."""
    return {p.stem: p for p in sorted(MACHINES_DIR.glob("*.json"))}
