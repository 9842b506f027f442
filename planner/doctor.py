"""Doctor checks: each reads a `HardwareSnapshot` and says what is wrong and how to fix it.

Every check is a small function `snapshot -> Check`; `run_checks` runs them all. A check never
probes the machine itself, so the same checks run on a saved snapshot of a machine you don't own.
"""

from __future__ import annotations

from typing import Callable, Literal

from pydantic import BaseModel

from dlab.planner.snapshot import GiB, GpuInfo, HardwareSnapshot
from dlab.planner.tiers import TierMatch, match_tier
from dlab.profiles import tiers

Status = Literal["ok", "warn", "fail", "skipped"]
STATUS_ORDER = {"ok": 0, "skipped": 0, "warn": 1, "fail": 2}

# PyTorch publishes CUDA builds at https://download.pytorch.org/whl/<tag>; the newest tag a driver
# can run is the highest whose CUDA version the driver supports.
TORCH_CUDA_TAGS = [(11, 8), (12, 1), (12, 4), (12, 6), (12, 8), (12, 9), (13, 0)]


class Check(BaseModel):
    id: str
    title: str
    status: Status
    finding: str
    fix: str = ""


class DoctorReport(BaseModel):
    snapshot: HardwareSnapshot
    checks: list[Check]
    tier: TierMatch

    def exit_code(self, strict: bool = False) -> int:
        worst = max((STATUS_ORDER[c.status] for c in self.checks), default=0)
        return 1 if worst == 2 or (strict and worst == 1) else 0


def _gpu_label(g: GpuInfo) -> str:
    return f"GPU{g.index} {g.name or '(name unreadable)'}"


def _vv(v: tuple[int, int] | None) -> str:
    return "%d.%d" % v if v else "?"


def torch_index_url(driver_cuda: tuple[int, int] | None) -> str:
    tags = [t for t in TORCH_CUDA_TAGS if driver_cuda is None or t <= driver_cuda]
    tag = tags[-1] if tags else TORCH_CUDA_TAGS[0]
    return f"https://download.pytorch.org/whl/cu{tag[0]}{tag[1]}"


# ------------------------------------------------------------------------------------- the checks
def check_nvidia_driver(s: HardwareSnapshot) -> Check:
    c = dict(id="nvidia.driver", title="NVIDIA driver and NVML")
    nv = s.nvidia
    if nv.nvml_available:
        if not nv.gpus:
            return Check(
                **c,
                status="warn",
                finding=f"NVML works (driver {nv.driver_version or '?'}) but reports no GPU",
                fix="check `nvidia-smi`; in a container, start it with `--gpus all`",
            )
        n = len(nv.gpus)
        return Check(
            **c,
            status="ok",
            finding=f"driver {nv.driver_version or '?'} (CUDA ≤ {_vv(nv.cuda_driver_version)}), "
            f"{n} GPU{'s' if n > 1 else ''} visible",
        )
    reason = nv.reason or "NVML unavailable"
    on_bus = nv.pci_devices or 0
    if on_bus:
        return Check(
            **c,
            status="fail",
            finding=f"{on_bus} NVIDIA GPU{'s' if on_bus > 1 else ''} on the PCI bus but NVML "
            f"is unusable: {reason}",
            fix="install the NVIDIA driver (e.g. `sudo ubuntu-drivers install`) and reboot; "
            "in a container, start it with `--gpus all`",
        )
    if "not found" in reason or "not installed" in reason:
        return Check(
            **c,
            status="skipped",
            finding=f"no NVIDIA GPU ({reason}); dlab runs on the CPU",
            fix="",
        )
    return Check(
        **c,
        status="fail",
        finding=reason,
        fix="the driver's kernel module and library disagree (often after a driver update): "
        "reboot, or reinstall the driver",
    )


def check_compute_capability(s: HardwareSnapshot) -> Check:
    c = dict(id="gpu.compute_capability", title="GPU compute capability")
    if not s.gpus:
        return Check(**c, status="skipped", finding="no NVIDIA GPU")
    problems: list[tuple[Status, str]] = []
    fine: list[str] = []
    for g in s.gpus:
        cc = g.compute_capability
        if cc is None:
            why = g.unavailable.get("compute_capability", "not readable")
            problems.append(("warn", f"{_gpu_label(g)}: compute capability unknown ({why})"))
        elif cc < (5, 0):
            problems.append(("fail", f"{_gpu_label(g)}: sm_{cc[0]}{cc[1]} is too old for any current PyTorch or ONNX Runtime CUDA build"))
        elif cc < (7, 5):
            problems.append(("warn", f"{_gpu_label(g)}: sm_{cc[0]}{cc[1]} is not in PyTorch's CUDA 12.8+ builds (they start at sm_75)"))
        else:
            fine.append(f"{_gpu_label(g)} sm_{cc[0]}{cc[1]}")
    if problems:
        status = "fail" if any(st == "fail" for st, _ in problems) else "warn"
        fix = (
            "replace the GPU (sm_75 / Turing or newer)"
            if status == "fail"
            else "use a CUDA 12.6 build of torch: pip install torch --index-url "
            "https://download.pytorch.org/whl/cu126"
        )
        return Check(**c, status=status, finding="; ".join(m for _, m in problems), fix=fix)
    return Check(**c, status="ok", finding=", ".join(fine) + ": supported")


def check_gpu_precision(s: HardwareSnapshot) -> Check:
    c = dict(id="gpu.precision", title="fp16 / bf16 on the GPU")
    if not s.gpus:
        return Check(**c, status="skipped", finding="no NVIDIA GPU")
    warns: list[str] = []
    fine: list[str] = []
    for g in s.gpus:
        name = (g.name or "").upper()
        cc = g.compute_capability
        if "GTX 16" in name:
            warns.append(f"{_gpu_label(g)}: fp16 gives NaN/black images on GTX 16xx; dlab runs it in fp32")
        elif cc is not None and cc[0] == 6 and cc != (6, 0):
            warns.append(f"{_gpu_label(g)}: Pascal runs fp16 at 1/64 of fp32 speed; dlab runs it in fp32")
        elif cc is None:
            warns.append(f"{_gpu_label(g)}: precision support unknown (compute capability unreadable)")
        elif cc >= (8, 0):
            fine.append(f"{_gpu_label(g)}: fp16 and bf16")
        else:
            fine.append(f"{_gpu_label(g)}: fp16 (bf16 needs compute capability ≥ 8.0)")
    if warns:
        return Check(
            **c,
            status="warn",
            finding="; ".join(warns),
            fix="fp32 needs twice the VRAM of fp16: expect smaller batches; a Turing (RTX 20) or newer card runs fp16",
        )
    return Check(**c, status="ok", finding="; ".join(fine))


def check_torch_build(s: HardwareSnapshot) -> Check:
    c = dict(id="torch.build", title="PyTorch build")
    t = s.software.torch
    if not t.installed:
        return Check(
            **c,
            status="fail",
            finding="torch is not installed: dlab cannot generate",
            fix=f"pip install torch --index-url {torch_index_url(s.nvidia.cuda_driver_version)}"
            if s.gpus
            else "pip install torch --index-url https://download.pytorch.org/whl/cpu",
        )
    if s.gpus and t.build != "cuda":
        return Check(
            **c,
            status="fail",
            finding=f"torch {t.version} is a {t.build or 'unknown'} build, but this machine has "
            f"an NVIDIA GPU: generation would run on the CPU",
            fix="pip install --force-reinstall torch --index-url "
            + torch_index_url(s.nvidia.cuda_driver_version),
        )
    if t.build == "cuda":
        return Check(**c, status="ok", finding=f"torch {t.version} (CUDA {_vv(t.cuda_version)} build)")
    return Check(**c, status="ok", finding=f"torch {t.version} ({t.build} build; no NVIDIA GPU to use)")


def check_torch_cuda_vs_driver(s: HardwareSnapshot) -> Check:
    c = dict(id="torch.cuda_driver", title="torch CUDA version vs driver")
    t, drv = s.software.torch, s.nvidia.cuda_driver_version
    if t.build != "cuda" or t.cuda_version is None:
        return Check(**c, status="skipped", finding="no CUDA build of torch")
    if not s.nvidia.nvml_available or drv is None:
        return Check(**c, status="skipped", finding="driver CUDA version unknown (NVML unavailable)")
    fix = (
        f"update the NVIDIA driver to one supporting CUDA {_vv(t.cuda_version)}, or install a "
        f"matching torch: pip install --force-reinstall torch --index-url {torch_index_url(drv)}"
    )
    if t.cuda_version[0] > drv[0]:
        return Check(
            **c,
            status="fail",
            finding=f"torch is built for CUDA {_vv(t.cuda_version)} but the driver supports "
            f"CUDA ≤ {_vv(drv)}: CUDA will not initialise",
            fix=fix,
        )
    if t.cuda_version > drv:
        return Check(
            **c,
            status="warn",
            finding=f"torch is built for CUDA {_vv(t.cuda_version)}, the driver supports "
            f"≤ {_vv(drv)}: minor-version compatibility runs most kernels, JIT-compiled ones fail",
            fix=fix,
        )
    return Check(
        **c,
        status="ok",
        finding=f"torch CUDA {_vv(t.cuda_version)} ≤ driver CUDA {_vv(drv)}",
    )


def check_ort_install(s: HardwareSnapshot) -> Check:
    c = dict(id="ort.install", title="ONNX Runtime install")
    ort = s.software.onnxruntime
    names = [d.name for d in ort.distributions]
    if not names:
        return Check(
            **c,
            status="warn",
            finding="onnxruntime is not installed: the ONNX backend is unavailable (eager PyTorch only)",
            fix="pip install onnxruntime-gpu" if s.gpus else "pip install onnxruntime",
        )
    if len(names) > 1:
        keep = "onnxruntime-gpu" if s.gpus or "onnxruntime-gpu" in names else names[0]
        return Check(
            **c,
            status="fail",
            finding=f"{' and '.join(names)} are all installed: they share the `onnxruntime` "
            "module and overwrite each other's files",
            fix=f"pip uninstall -y {' '.join(names)} && pip install {keep}",
        )
    if "providers" in ort.unavailable:
        return Check(**c, status="fail", finding=ort.unavailable["providers"],
                     fix=f"pip install --force-reinstall {names[0]}")
    cpu = ort.check("CPUExecutionProvider")
    if cpu is not None and not cpu.works:
        return Check(
            **c,
            status="fail",
            finding=f"{names[0]} {ort.version} cannot create a CPU session: {cpu.detail}",
            fix=f"pip install --force-reinstall {names[0]}",
        )
    return Check(
        **c,
        status="ok",
        finding=f"{names[0]} {ort.version}; providers: {', '.join(p.replace('ExecutionProvider', '') for p in ort.providers)}"
        + (f" (checked {ort.checked_at:%Y-%m-%d %H:%M} UTC, cached; `dlab doctor --fresh` re-checks)" if ort.cached and ort.checked_at else ""),
    )


def check_ort_cuda(s: HardwareSnapshot) -> Check:
    c = dict(id="ort.cuda", title="ONNX Runtime CUDA provider")
    ort = s.software.onnxruntime
    if not s.gpus:
        return Check(**c, status="skipped", finding="no NVIDIA GPU")
    if not ort.distributions:
        return Check(**c, status="skipped", finding="onnxruntime is not installed")
    if "CUDAExecutionProvider" not in ort.providers:
        return Check(
            **c,
            status="warn",
            finding="this onnxruntime build has no CUDA provider: ONNX models run on the CPU",
            fix="pip uninstall -y onnxruntime && pip install onnxruntime-gpu",
        )
    cuda = ort.check("CUDAExecutionProvider")
    if cuda is None:
        why = ort.unavailable.get("CUDAExecutionProvider", "not checked")
        return Check(**c, status="skipped", finding=f"CUDA provider listed, {why}")
    if not cuda.works:
        return Check(
            **c,
            status="fail",
            finding=f"CUDA provider is listed but cannot create a session: {cuda.detail}",
            fix="pip install 'onnxruntime-gpu[cuda,cudnn]' (brings the CUDA and cuDNN libraries "
            "as wheels), or install the CUDA toolkit and cuDNN versions it names",
        )
    return Check(**c, status="ok", finding="CUDA provider creates sessions")


def check_vram_in_use(s: HardwareSnapshot) -> Check:
    c = dict(id="gpu.vram_free", title="VRAM in use by other processes")
    if not s.gpus:
        return Check(**c, status="skipped", finding="no NVIDIA GPU")
    busy, fine = [], []
    for g in s.gpus:
        total, free = g.memory_total_bytes, g.memory_free_bytes
        if total is None or free is None:
            busy.append(f"{_gpu_label(g)}: free VRAM unreadable ({g.unavailable.get('memory_free_bytes', '?')})")
            continue
        used = total - free
        if used > max(GiB, 0.10 * total):
            busy.append(
                f"{_gpu_label(g)}: {used / GiB:.1f} of {total / GiB:.1f} GiB in use; "
                f"dlab plans against the {free / GiB:.1f} GiB free"
            )
        else:
            fine.append(f"{_gpu_label(g)}: {free / GiB:.1f} of {total / GiB:.1f} GiB free")
    if busy:
        return Check(
            **c,
            status="warn",
            finding="; ".join(busy),
            fix="close other GPU programs (browsers, games, other ML jobs; `nvidia-smi` lists them) for larger plans",
        )
    return Check(**c, status="ok", finding="; ".join(fine))


def check_ram(s: HardwareSnapshot) -> Check:
    c = dict(id="memory.ram", title="RAM for the built-in models")
    need = tiers().builtin_workload.min_ram_available_gib
    avail, total = s.memory.available_bytes, s.memory.total_bytes
    if avail is None:
        return Check(**c, status="warn", finding=f"available RAM unreadable ({s.memory.unavailable.get('total_bytes', '?')})")
    have = f"{avail / GiB:.1f} GiB available" + (f" of {total / GiB:.1f} GiB" if total else "")
    if avail / GiB < need:
        return Check(
            **c,
            status="fail",
            finding=f"{have}; the smallest built-in workload needs {need:g} GiB",
            fix="close memory-hungry programs, or add RAM",
        )
    return Check(**c, status="ok", finding=f"{have} (built-in models need {need:g} GiB)")


def check_disk(s: HardwareSnapshot) -> Check:
    c = dict(id="disk.free", title="Disk space where dlab writes")
    need = tiers().builtin_workload.min_disk_free_gib
    worst: Status = "ok"
    parts = []
    for d in s.disks:
        if d.free_bytes is None:
            parts.append(f"{d.role} {d.path}: free space unreadable")
            worst = "warn" if worst == "ok" else worst
            continue
        free = d.free_bytes / GiB
        parts.append(f"{d.role} {d.path}: {free:.1f} GiB free")
        if free < need:
            worst = "fail" if d.role == "data" else ("warn" if worst == "ok" else worst)
    if not s.disks:
        return Check(**c, status="warn", finding="no disk information")
    return Check(
        **c,
        status=worst,
        finding="; ".join(parts) + ("" if worst == "ok" else f" (need {need:g} GiB)"),
        fix="" if worst == "ok" else "free disk space, or point --out at a larger disk",
    )


def check_cpu_bf16(s: HardwareSnapshot) -> Check:
    c = dict(id="cpu.bf16", title="CPU bf16 (AMX / AVX-512-bf16)")
    cpu = s.cpu
    if cpu.amx_bf16:
        return Check(**c, status="ok", finding="AMX: eager bf16 autocast is the fast CPU path")
    if cpu.avx512_bf16:
        return Check(**c, status="ok", finding="AVX-512-bf16: eager bf16 autocast is the fast CPU path")
    if "flags" in cpu.unavailable:
        return Check(**c, status="skipped", finding=f"CPU flags unreadable ({cpu.unavailable['flags']})")
    have = "AVX-512" if cpu.avx512 else "AVX2" if cpu.avx2 else "NEON" if cpu.neon else "no wide SIMD"
    if s.gpus:
        return Check(**c, status="ok", finding=f"no bf16 instructions ({have}); the GPU does the work")
    return Check(
        **c,
        status="warn",
        finding=f"no bf16 instructions ({have}): the CPU path runs fp32, bf16 autocast would be slower",
        fix="nothing to repair; CPUs with AMX (Xeon 4th gen+) or AVX-512-bf16 (Zen 4+) run bf16 about 2× faster",
    )


CHECKS: list[Callable[[HardwareSnapshot], Check]] = [
    check_nvidia_driver,
    check_compute_capability,
    check_gpu_precision,
    check_torch_build,
    check_torch_cuda_vs_driver,
    check_ort_install,
    check_ort_cuda,
    check_vram_in_use,
    check_ram,
    check_disk,
    check_cpu_bf16,
]


def run_checks(snapshot: HardwareSnapshot) -> list[Check]:
    return [check(snapshot) for check in CHECKS]


def diagnose(snapshot: HardwareSnapshot) -> DoctorReport:
    return DoctorReport(snapshot=snapshot, checks=run_checks(snapshot), tier=match_tier(snapshot))
