"""Probe this machine into a `HardwareSnapshot`, without importing torch.

Every reader catches what it can fail on and records the reason in the part's `unavailable` map: a
missing NVML, an unsupported NVML query, a container without /proc/cpuinfo all yield a snapshot,
never a traceback. torch's build is read from its package files (`torch/version.py`), since
importing torch costs seconds; ONNX Runtime is imported (a few hundred ms) because creating a session
is the only proof that an execution provider works. That proof is cached (`ort-probe.json` in the user
cache dir) under a key of everything that can change its outcome: the ONNX Runtime, NVIDIA and
TensorRT distributions and versions, the ORT package's files, the dynamic-linker cache
(`/etc/ld.so.cache`, rewritten when system CUDA/cuDNN libraries are installed), the library-path
environment and the GPUs and driver. A change to any of them re-probes; `fresh=True` always does.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.metadata as metadata
import importlib.util
import os
import platform
import re
import socket
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import psutil

from dlab import __version__
from dlab.planner.snapshot import (
    CpuInfo,
    DiskInfo,
    GpuInfo,
    HardwareSnapshot,
    MemoryInfo,
    NvidiaInfo,
    OrtDistribution,
    OrtInfo,
    ProviderCheck,
    SoftwareInfo,
    TorchInfo,
)

PROBE_MODEL = Path(__file__).resolve().parent / "data" / "probe_relu.onnx"
NVIDIA_PCI_VENDOR = "0x10de"


def data_dir() -> Path:
    """Where dlab writes models, exports and outputs by default."""
    import platformdirs

    return Path(platformdirs.user_data_dir("dlab", appauthor=False))


def cache_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("dlab", appauthor=False))


# ------------------------------------------------------------------------------------ NVIDIA / NVML
def _nvml_error_text(e: Exception) -> str:
    name = type(e).__name__.replace("NVMLError_", "")
    text = str(e)
    return f"{name}: {text}" if text and text != name else name


def _read(part: Any, field: str, fn: Callable[[], Any]) -> None:
    """Set `part.field = fn()`, or record why it could not be read."""
    try:
        setattr(part, field, fn())
    except Exception as e:  # NVML raises one class per error code; all mean "not readable"
        part.unavailable[field] = _nvml_error_text(e)


def count_nvidia_pci_devices(sysfs: Path = Path("/sys/bus/pci/devices")) -> int | None:
    """NVIDIA display (0x0300) and 3D (0x0302) controllers on the PCI bus; None off Linux."""
    if not sysfs.is_dir():
        return None
    n = 0
    for dev in sysfs.iterdir():
        try:
            vendor = (dev / "vendor").read_text().strip()
            cls = (dev / "class").read_text().strip()
        except OSError:
            continue
        if vendor == NVIDIA_PCI_VENDOR and cls.startswith("0x03"):
            n += 1
    return n


def _decode(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def probe_nvidia() -> NvidiaInfo:
    info = NvidiaInfo(pci_devices=count_nvidia_pci_devices())
    try:
        import pynvml
    except ImportError as e:
        info.reason = f"nvidia-ml-py is not installed ({e})"
        return info
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError_LibraryNotFound:
        info.reason = "NVML library (libnvidia-ml) not found: no NVIDIA driver installed"
        return info
    except pynvml.NVMLError as e:
        info.reason = f"NVML failed to initialise ({_nvml_error_text(e)})"
        return info
    except Exception as e:  # a broken driver install can fail in odd ways (OSError from ctypes)
        info.reason = f"NVML failed to initialise ({type(e).__name__}: {e})"
        return info
    info.nvml_available = True
    try:
        _read(info, "driver_version", lambda: _decode(pynvml.nvmlSystemGetDriverVersion()))

        def cuda_version() -> tuple[int, int]:
            v = pynvml.nvmlSystemGetCudaDriverVersion()
            return (v // 1000, (v % 1000) // 10)

        _read(info, "cuda_driver_version", cuda_version)
        try:
            count = pynvml.nvmlDeviceGetCount()
        except pynvml.NVMLError as e:
            info.unavailable["gpus"] = _nvml_error_text(e)
            count = 0
        for i in range(count):
            info.gpus.append(_probe_gpu(pynvml, i))
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()
    return info


def _probe_gpu(pynvml: Any, index: int) -> GpuInfo:
    gpu = GpuInfo(index=index)
    try:
        h = pynvml.nvmlDeviceGetHandleByIndex(index)
    except pynvml.NVMLError as e:
        gpu.unavailable["handle"] = _nvml_error_text(e)
        return gpu
    _read(gpu, "name", lambda: _decode(pynvml.nvmlDeviceGetName(h)))
    _read(gpu, "uuid", lambda: _decode(pynvml.nvmlDeviceGetUUID(h)))
    try:
        mem = pynvml.nvmlDeviceGetMemoryInfo(h)
        gpu.memory_total_bytes, gpu.memory_free_bytes = int(mem.total), int(mem.free)
        gpu.memory_used_bytes = int(mem.used)
    except pynvml.NVMLError as e:
        for f in ("memory_total_bytes", "memory_free_bytes", "memory_used_bytes"):
            gpu.unavailable[f] = _nvml_error_text(e)
    _read(gpu, "compute_capability", lambda: tuple(pynvml.nvmlDeviceGetCudaComputeCapability(h)))
    _read(gpu, "pcie_gen_current", lambda: pynvml.nvmlDeviceGetCurrPcieLinkGeneration(h))
    _read(gpu, "pcie_gen_max", lambda: pynvml.nvmlDeviceGetMaxPcieLinkGeneration(h))
    _read(gpu, "pcie_width_current", lambda: pynvml.nvmlDeviceGetCurrPcieLinkWidth(h))
    _read(gpu, "pcie_width_max", lambda: pynvml.nvmlDeviceGetMaxPcieLinkWidth(h))
    _read(gpu, "power_limit_w", lambda: pynvml.nvmlDeviceGetEnforcedPowerLimit(h) / 1000.0)
    _read(
        gpu,
        "temperature_c",
        lambda: pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU),
    )
    _read(gpu, "utilization_pct", lambda: pynvml.nvmlDeviceGetUtilizationRates(h).gpu)
    if gpu.name:
        from dlab.profiles import gpu_catalog

        spec = gpu_catalog().match(gpu.name, gpu.memory_total_bytes)
        gpu.catalog_id = spec.id if spec else None
    return gpu


# ------------------------------------------------------------------------------------------- CPU
def parse_cpuinfo(text: str) -> dict[str, Any]:
    """Model name and ISA flags from /proc/cpuinfo (x86 `flags`, ARM `Features`)."""
    model = None
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and model is None:
            model = value.strip() or None
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return {
        "model": model,
        "avx2": "avx2" in flags,
        "avx512": "avx512f" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
        "neon": bool({"asimd", "neon"} & flags),
    }


def probe_cpu(cpuinfo_path: Path = Path("/proc/cpuinfo")) -> CpuInfo:
    cpu = CpuInfo(arch=platform.machine() or None)
    try:
        parsed = parse_cpuinfo(cpuinfo_path.read_text(errors="replace"))
        for k, v in parsed.items():
            setattr(cpu, k, v)
    except OSError as e:
        cpu.unavailable["flags"] = f"{cpuinfo_path} not readable ({e.strerror or e})"
    if cpu.model is None:
        cpu.model = platform.processor() or None
        if cpu.model is None:
            cpu.unavailable.setdefault("model", "not reported by the OS")
    if cpu.arch in ("arm64", "aarch64"):
        cpu.neon = True  # mandatory in ARMv8-A
    _read(cpu, "physical_cores", lambda: psutil.cpu_count(logical=False))
    _read(cpu, "logical_cores", lambda: psutil.cpu_count(logical=True))
    try:
        freq = psutil.cpu_freq()
        if freq and freq.max:
            cpu.freq_max_mhz = float(freq.max)
        elif freq and freq.current:
            cpu.freq_max_mhz = float(freq.current)
        else:
            cpu.unavailable["freq_max_mhz"] = "not reported (common in VMs)"
    except Exception as e:
        cpu.unavailable["freq_max_mhz"] = f"{type(e).__name__}: {e}"
    return cpu


# ------------------------------------------------------------------------------- memory and disk
def probe_memory() -> MemoryInfo:
    mem = MemoryInfo()
    try:
        vm = psutil.virtual_memory()
        mem.total_bytes, mem.available_bytes = int(vm.total), int(vm.available)
    except Exception as e:
        mem.unavailable["total_bytes"] = f"{type(e).__name__}: {e}"
    try:
        sw = psutil.swap_memory()
        mem.swap_total_bytes, mem.swap_free_bytes = int(sw.total), int(sw.free)
    except Exception as e:
        mem.unavailable["swap_total_bytes"] = f"{type(e).__name__}: {e}"
    return mem


def _existing_parent(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def probe_disk(role: str, path: Path) -> DiskInfo:
    disk = DiskInfo(role=role, path=str(path))
    try:
        usage = psutil.disk_usage(str(_existing_parent(path)))
        disk.total_bytes, disk.free_bytes = int(usage.total), int(usage.free)
    except Exception as e:
        disk.unavailable["free_bytes"] = f"{type(e).__name__}: {e}"
    return disk


# -------------------------------------------------------------------------------------- software
def parse_torch_version_py(text: str) -> dict[str, str | None]:
    """The assignments in torch/version.py (`__version__`, `cuda`, `hip`, `xpu`), without importing."""
    out: dict[str, str | None] = {}
    for node in ast.parse(text).body:
        target, value = None, None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign):
            target, value = node.target, node.value
        if isinstance(target, ast.Name) and isinstance(value, ast.Constant):
            if value.value is None or isinstance(value.value, str):
                out[target.id] = value.value
    return out


def _major_minor(v: str | None) -> tuple[int, int] | None:
    m = re.match(r"(\d+)\.(\d+)", v or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def probe_torch() -> TorchInfo:
    info = TorchInfo()
    try:
        info.version = metadata.version("torch")
        info.installed = True
    except metadata.PackageNotFoundError:
        info.unavailable["version"] = "torch is not installed"
        return info
    spec = importlib.util.find_spec("torch")
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        info.unavailable["build"] = "torch package files not found"
        return info
    try:
        fields = parse_torch_version_py((Path(locations[0]) / "version.py").read_text())
    except (OSError, SyntaxError) as e:
        info.unavailable["build"] = f"torch/version.py unreadable ({e})"
        info.build = "unknown"
        return info
    if fields.get("cuda"):
        info.build, info.cuda_version = "cuda", _major_minor(fields["cuda"])
    elif fields.get("hip"):
        info.build = "rocm"
    elif fields.get("xpu"):
        info.build = "xpu"
    else:
        info.build = "cpu"
    return info


@contextlib.contextmanager
def _captured_stderr_fd():
    """ORT's C++ logger writes the reason a provider failed to fd 2; capture it there."""
    with tempfile.TemporaryFile(mode="w+b") as buf:
        try:
            saved = os.dup(2)
        except OSError:
            yield lambda: ""
            return
        sys.stderr.flush()
        os.dup2(buf.fileno(), 2)
        try:
            yield lambda: (buf.seek(0), buf.read().decode(errors="replace"))[1]
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _ort_failure_reason(log: str) -> str:
    log = _ANSI.sub("", log)
    reasons = []
    m = re.search(r"with error: ([^\n]+)", log)
    if m:
        reasons.append(m.group(1).strip())
    m = re.search(r"(Require .*?)\.?\s*Please", log)
    if m:
        reasons.append(m.group(1).strip())
    if not reasons:
        lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
        reasons.append(lines[-1][-300:] if lines else "no reason given by onnxruntime")
    return "; ".join(reasons)


def check_ort_provider(ort: Any, provider: str) -> ProviderCheck:
    """Create a one-node session on `provider` alone; it works only if ORT really placed it there
    (ORT silently falls back to the CPU when a provider's libraries are missing)."""
    options = ort.SessionOptions()
    options.log_severity_level = 1  # warnings and errors: where the missing-library reason is
    with _captured_stderr_fd() as read_log:
        try:
            session = ort.InferenceSession(
                str(PROBE_MODEL),
                sess_options=options,
                providers=list(dict.fromkeys([provider, "CPUExecutionProvider"])),
            )
            active = session.get_providers()
            error = None
        except Exception as e:
            active, error = [], f"{type(e).__name__}: {e}"
        log = read_log()
    if provider in active:
        return ProviderCheck(provider=provider, works=True, detail="session created")
    return ProviderCheck(
        provider=provider, works=False, detail=error or _ort_failure_reason(log)
    )


ORT_CACHE_FILE = "ort-probe.json"
_LIBRARY_ENV = ("LD_LIBRARY_PATH", "CUDA_PATH", "CUDA_HOME", "CUDNN_PATH", "CUDA_VISIBLE_DEVICES", "ORT_TENSORRT_ENGINE_CACHE_PATH")


def _ort_cache_key(info: OrtInfo, related: list[tuple[str, str]], gpu_key: str) -> str:
    """A digest of everything that can change what the provider checks find (see the module doc)."""
    import hashlib
    import json

    def mtime(path: str | Path | None) -> float | None:
        try:
            return os.stat(path).st_mtime if path else None
        except OSError:
            return None

    spec = importlib.util.find_spec("onnxruntime")  # locates, does not import
    package = Path(spec.origin).parent if spec and spec.origin else None
    capi = package / "capi" if package else None
    parts = {
        "dlab": __version__,
        "python": sys.prefix,
        "ort": [(d.name, d.version) for d in info.distributions],
        "related": sorted(related),
        "package": [str(package), mtime(package), mtime(capi)],
        "ldcache": mtime("/etc/ld.so.cache"),
        "env": {k: os.environ.get(k) for k in _LIBRARY_ENV} | ({"PATH": os.environ.get("PATH")} if os.name == "nt" else {}),
        "gpus": gpu_key,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _read_ort_cache(key: str) -> OrtInfo | None:
    try:
        import json

        cached = json.loads((cache_dir() / ORT_CACHE_FILE).read_text())
        if cached.get("key") != key:
            return None
        info = OrtInfo.model_validate(cached["info"])
        return info.model_copy(update={"cached": True})
    except Exception:  # missing, unreadable, from another dlab version: probe again
        return None


def _write_ort_cache(key: str, info: OrtInfo) -> None:
    import json

    path = cache_dir() / ORT_CACHE_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps({"key": key, "info": json.loads(info.model_dump_json())}))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home: no cache, every doctor probes


def probe_onnxruntime(check_gpu_providers: bool, gpu_key: str = "", fresh: bool = False) -> OrtInfo:
    info = OrtInfo()
    related = []
    for dist in metadata.distributions():
        name = (dist.metadata["Name"] or "").lower()
        if name.startswith("onnxruntime") and not name.startswith("onnxruntime-genai"):
            if all(d.name != name for d in info.distributions):
                info.distributions.append(OrtDistribution(name=name, version=dist.version))
        elif name.startswith(("nvidia-", "tensorrt")):  # pip-installed CUDA, cuDNN, TensorRT libraries
            related.append((name, dist.version))
    if not info.distributions:
        info.unavailable["providers"] = "onnxruntime is not installed"
        return info
    key = _ort_cache_key(info, related, f"{check_gpu_providers}:{gpu_key}")
    if not fresh and (cached := _read_ort_cache(key)) is not None:
        return cached
    info = _probe_ort_providers(info, check_gpu_providers)
    if "providers" not in info.unavailable:  # only a successful import is worth remembering
        # Keyed again: the first import of ORT can touch its package directory (bytecode caches).
        _write_ort_cache(_ort_cache_key(info, related, f"{check_gpu_providers}:{gpu_key}"), info)
    return info


def _probe_ort_providers(info: OrtInfo, check_gpu_providers: bool) -> OrtInfo:
    info.checked_at = datetime.now(timezone.utc)
    try:
        import onnxruntime as ort
    except Exception as e:  # a half-uninstalled ORT (two dists shadowing) fails here
        info.unavailable["providers"] = f"import onnxruntime failed ({type(e).__name__}: {e})"
        return info
    info.version = getattr(ort, "__version__", None)
    info.providers = list(ort.get_available_providers())
    info.provider_checks.append(check_ort_provider(ort, "CPUExecutionProvider"))
    if "CUDAExecutionProvider" in info.providers:
        if check_gpu_providers:
            info.provider_checks.append(check_ort_provider(ort, "CUDAExecutionProvider"))
        else:
            info.unavailable["CUDAExecutionProvider"] = "not checked: no NVIDIA GPU"
    return info


def probe_software(check_gpu_providers: bool, gpu_key: str = "", fresh: bool = False) -> SoftwareInfo:
    return SoftwareInfo(
        os=platform.system() or None,
        os_release=platform.release() or None,
        python=platform.python_version(),
        dlab=__version__,
        torch=probe_torch(),
        onnxruntime=probe_onnxruntime(check_gpu_providers, gpu_key, fresh),
    )


# --------------------------------------------------------------------------------------- snapshot
def take_snapshot(cwd: Path | None = None, fresh: bool = False) -> HardwareSnapshot:
    """Probe everything. Never raises for anything the machine can be missing. `fresh` re-runs the
    ONNX Runtime provider checks instead of reusing a cached result."""
    nvidia = probe_nvidia()
    gpu_key = ",".join([nvidia.driver_version or "", str(nvidia.pci_devices), *(g.uuid or g.name or "" for g in nvidia.gpus)])
    return HardwareSnapshot(
        taken_at=datetime.now(timezone.utc),
        hostname=socket.gethostname() or None,
        nvidia=nvidia,
        cpu=probe_cpu(),
        memory=probe_memory(),
        disks=[probe_disk("data", data_dir()), probe_disk("cwd", cwd or Path.cwd())],
        software=probe_software(check_gpu_providers=bool(nvidia.gpus), gpu_key=gpu_key, fresh=fresh),
    )
