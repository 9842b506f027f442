"""The `HardwareSnapshot`: everything dlab knows about a machine, as one flat pydantic model.

The probe fills it, `dlab doctor --json` prints it, `--snapshot FILE` reads it back, and the doctor,
tier matcher and planner only ever look at a snapshot, never at the live machine. Each part keeps what
could be read; a field that could not be read is `None` and its name is in `unavailable` with the
reason (nvitop's `NA` sentinel, but with the why).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dlab.errors import BadFile

GiB = 1024**3
SCHEMA_VERSION = 1


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid")

    unavailable: dict[str, str] = Field(
        default_factory=dict, description="field name -> why it could not be read"
    )


class GpuInfo(_Part):
    index: int
    name: str | None = None
    uuid: str | None = None
    memory_total_bytes: int | None = None
    memory_free_bytes: int | None = None
    memory_used_bytes: int | None = None
    compute_capability: tuple[int, int] | None = None
    pcie_gen_current: int | None = None
    pcie_gen_max: int | None = None
    pcie_width_current: int | None = None
    pcie_width_max: int | None = None
    power_limit_w: float | None = None
    temperature_c: int | None = None
    utilization_pct: int | None = None
    catalog_id: str | None = Field(None, description="profiles/gpus.toml entry this card matched")

    @property
    def total_gib(self) -> float | None:
        return None if self.memory_total_bytes is None else self.memory_total_bytes / GiB

    @property
    def free_gib(self) -> float | None:
        return None if self.memory_free_bytes is None else self.memory_free_bytes / GiB

    @property
    def cc_str(self) -> str | None:
        return None if self.compute_capability is None else "%d.%d" % self.compute_capability


class NvidiaInfo(_Part):
    nvml_available: bool = False
    reason: str | None = Field(None, description="why NVML could not be used, when it could not")
    pci_devices: int | None = Field(
        None, description="NVIDIA display/3D controllers seen on the PCI bus (Linux sysfs)"
    )
    driver_version: str | None = None
    cuda_driver_version: tuple[int, int] | None = Field(
        None, description="highest CUDA version the driver supports"
    )
    gpus: list[GpuInfo] = Field(default_factory=list)


class CpuInfo(_Part):
    model: str | None = None
    arch: str | None = None
    physical_cores: int | None = None
    logical_cores: int | None = None
    freq_max_mhz: float | None = None
    avx2: bool = False
    avx512: bool = False
    avx512_bf16: bool = False
    amx_bf16: bool = False
    neon: bool = False

    @property
    def fast_bf16(self) -> bool:
        """bf16 matmuls in hardware: AMX tiles or AVX-512-bf16 (Sapphire Rapids, Zen 4 and later)."""
        return self.amx_bf16 or self.avx512_bf16


class MemoryInfo(_Part):
    total_bytes: int | None = None
    available_bytes: int | None = None
    swap_total_bytes: int | None = None
    swap_free_bytes: int | None = None


class DiskInfo(_Part):
    role: Literal["data", "cwd"]
    path: str
    total_bytes: int | None = None
    free_bytes: int | None = None


class TorchInfo(_Part):
    installed: bool = False
    version: str | None = None
    build: Literal["cpu", "cuda", "rocm", "xpu", "unknown"] | None = None
    cuda_version: tuple[int, int] | None = None


class OrtDistribution(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    version: str


class ProviderCheck(BaseModel):
    model_config = ConfigDict(extra="forbid")
    provider: str
    works: bool
    detail: str = ""


class OrtInfo(_Part):
    distributions: list[OrtDistribution] = Field(default_factory=list)
    version: str | None = None
    providers: list[str] = Field(default_factory=list)
    provider_checks: list[ProviderCheck] = Field(default_factory=list)
    # When the provider checks ran, and whether this snapshot reused them from the probe cache
    # (keyed on everything that can change their outcome; see `dlab.planner.probe`).
    checked_at: datetime | None = None
    cached: bool = False

    def check(self, provider: str) -> ProviderCheck | None:
        return next((c for c in self.provider_checks if c.provider == provider), None)


class SoftwareInfo(_Part):
    os: str | None = None
    os_release: str | None = None
    python: str | None = None
    dlab: str | None = None
    torch: TorchInfo = Field(default_factory=TorchInfo)
    onnxruntime: OrtInfo = Field(default_factory=OrtInfo)


class HardwareSnapshot(BaseModel):
    """One machine at one moment. Round-trips through JSON unchanged."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    taken_at: datetime
    hostname: str | None = None
    label: str | None = Field(None, description="set on example / hypothetical machines")
    nvidia: NvidiaInfo = Field(default_factory=NvidiaInfo)
    cpu: CpuInfo = Field(default_factory=CpuInfo)
    memory: MemoryInfo = Field(default_factory=MemoryInfo)
    disks: list[DiskInfo] = Field(default_factory=list)
    software: SoftwareInfo = Field(default_factory=SoftwareInfo)

    @property
    def gpus(self) -> list[GpuInfo]:
        return self.nvidia.gpus

    def disk(self, role: str) -> DiskInfo | None:
        return next((d for d in self.disks if d.role == role), None)

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)


def load_snapshot(path: str | Path) -> HardwareSnapshot:
    """Read a snapshot saved by `dlab doctor --json`; every failure is one `BadFile` line."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadFile(f"snapshot {p}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise BadFile(f"snapshot {p}: cannot read it ({e.__class__.__name__}: {e})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise BadFile(f"snapshot {p}: not JSON (line {e.lineno}: {e.msg})") from None
    if not isinstance(data, dict):
        raise BadFile(f"snapshot {p}: expected a JSON object, got {type(data).__name__}")
    if isinstance(data.get("snapshot"), dict) and "checks" in data:
        data = data["snapshot"]  # a whole `dlab doctor --json` report
    version = data.get("schema_version")
    if version is not None and version != SCHEMA_VERSION:
        raise BadFile(f"snapshot {p}: schema_version {version!r}, this dlab reads {SCHEMA_VERSION}")
    try:
        return HardwareSnapshot.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "(top level)"
        more = f" (and {len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
        raise BadFile(f"snapshot {p}: field {where}: {err['msg']}{more}") from None
