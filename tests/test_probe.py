from __future__ import annotations

import json
import subprocess
import sys
import types
from collections import namedtuple

import pynvml
import pytest

from dlab.planner import probe
from dlab.planner.doctor import check_nvidia_driver, diagnose
from dlab.planner.snapshot import HardwareSnapshot

X86 = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu vme avx2 avx512f avx512_bf16 amx_bf16 amx_tile
"""
ARM = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics
CPU implementer\t: 0x41
"""


def test_parse_cpuinfo_x86_and_arm():
    x = probe.parse_cpuinfo(X86)
    assert x["model"] == "Intel(R) Xeon(R) Platinum 8480+"
    assert x["avx2"] and x["avx512"] and x["avx512_bf16"] and x["amx_bf16"] and not x["neon"]
    a = probe.parse_cpuinfo(ARM)
    assert a["neon"] and not a["avx2"] and a["model"] is None


def test_missing_cpuinfo_is_recorded_not_raised(tmp_path):
    cpu = probe.probe_cpu(tmp_path / "nope")
    assert "flags" in cpu.unavailable and cpu.logical_cores >= 1


def test_pci_scan(tmp_path):
    for name, vendor, cls in [("0000:01:00.0", "0x10de", "0x030000"), ("0000:01:00.1", "0x10de", "0x040300"),
                              ("0000:02:00.0", "0x1002", "0x030000"), ("0000:03:00.0", "0x10de", "0x030200")]:
        dev = tmp_path / name
        dev.mkdir()
        (dev / "vendor").write_text(vendor + "\n")
        (dev / "class").write_text(cls + "\n")
    # an NVIDIA VGA controller and a 3D controller; not its audio function, not the AMD card
    assert probe.count_nvidia_pci_devices(tmp_path) == 2
    assert probe.count_nvidia_pci_devices(tmp_path / "absent") is None


def test_torch_build_read_without_import():
    text = "__version__ = '2.5.1+cu124'\ncuda: Optional[str] = '12.4'\nhip: Optional[str] = None\n"
    assert probe.parse_torch_version_py(text) == {"__version__": "2.5.1+cu124", "cuda": "12.4", "hip": None}
    code = ("import sys; from dlab.planner.probe import probe_torch; t = probe_torch(); "
            "print(t.build, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    import torch  # here only, to know the truth

    assert out == [("cuda" if torch.version.cuda else "cpu"), "False"]


# ------------------------------------------------------------------------------------- NVML
def _fake_nvml(init_error=None, unsupported=()):
    """An NVML with one RTX 4090 whose `unsupported` queries fail the way real NVML does."""
    Mem = namedtuple("Mem", "total free used")
    Util = namedtuple("Util", "gpu memory")

    def q(name, value):
        def f(*a):
            if name in unsupported:
                raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
            return value
        return f

    def init():
        if init_error is not None:
            raise pynvml.NVMLError(init_error)

    m = types.ModuleType("pynvml")
    for attr in dir(pynvml):
        if attr.startswith("NVMLError") or attr.startswith("NVML_"):
            setattr(m, attr, getattr(pynvml, attr))
    m.nvmlInit, m.nvmlShutdown = init, lambda: None
    m.nvmlSystemGetDriverVersion = q("driver", "560.35.03")
    m.nvmlSystemGetCudaDriverVersion = q("cuda", 12060)
    m.nvmlDeviceGetCount = q("count", 1)
    m.nvmlDeviceGetHandleByIndex = q("handle", object())
    m.nvmlDeviceGetName = q("name", "NVIDIA GeForce RTX 4090")
    m.nvmlDeviceGetUUID = q("uuid", "GPU-1234")
    m.nvmlDeviceGetMemoryInfo = q("memory", Mem(24564 * 2**20, 20000 * 2**20, 4564 * 2**20))
    m.nvmlDeviceGetCudaComputeCapability = q("cc", (8, 9))
    m.nvmlDeviceGetCurrPcieLinkGeneration = q("pcie", 4)
    m.nvmlDeviceGetMaxPcieLinkGeneration = q("pcie", 4)
    m.nvmlDeviceGetCurrPcieLinkWidth = q("pcie", 16)
    m.nvmlDeviceGetMaxPcieLinkWidth = q("pcie", 16)
    m.nvmlDeviceGetEnforcedPowerLimit = q("power", 450000)
    m.nvmlDeviceGetTemperature = q("temp", 41)
    m.nvmlDeviceGetUtilizationRates = q("util", Util(3, 1))
    return m


def test_nvml_fields_read_and_matched_to_catalog(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml())
    nv = probe.probe_nvidia()
    assert nv.nvml_available and nv.driver_version == "560.35.03" and nv.cuda_driver_version == (12, 6)
    g = nv.gpus[0]
    assert g.name == "NVIDIA GeForce RTX 4090" and g.compute_capability == (8, 9)
    assert g.memory_free_bytes == 20000 * 2**20 and g.power_limit_w == 450.0
    assert g.catalog_id == "rtx-4090" and g.unavailable == {}


def test_unreadable_nvml_fields_are_recorded_with_reason(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml(unsupported={"pcie", "power", "temp"}))
    g = probe.probe_nvidia().gpus[0]
    assert g.pcie_gen_current is None and g.power_limit_w is None
    assert g.unavailable["pcie_gen_max"] == "NotSupported: Not Supported"
    assert set(g.unavailable) == {"pcie_gen_current", "pcie_gen_max", "pcie_width_current",
                                  "pcie_width_max", "power_limit_w", "temperature_c"}
    assert g.memory_total_bytes is not None  # the rest is kept


def test_broken_nvml_init_is_a_reason_not_a_crash(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml(init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED))
    monkeypatch.setattr(probe, "count_nvidia_pci_devices", lambda: 1)
    nv = probe.probe_nvidia()
    assert not nv.nvml_available and "DriverNotLoaded" in nv.reason and nv.gpus == []
    snap = probe.take_snapshot()
    c = check_nvidia_driver(snap)
    assert c.status == "fail" and "DriverNotLoaded" in c.finding


def test_real_nvml():
    """Exercises the real library: on a machine without the NVIDIA driver, 'no NVIDIA GPU'."""
    nv = probe.probe_nvidia()
    try:
        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
        has_nvml = True
    except pynvml.NVMLError:
        has_nvml = False
    assert nv.nvml_available == has_nvml
    if has_nvml:
        assert nv.driver_version and all(g.memory_total_bytes for g in nv.gpus)
    else:
        assert nv.reason and nv.gpus == []


# -------------------------------------------------------------------------------- ONNX Runtime
def test_ort_cpu_provider_creates_a_session():
    ort = pytest.importorskip("onnxruntime")
    c = probe.check_ort_provider(ort, "CPUExecutionProvider")
    assert c.works, c.detail


def test_ort_cuda_provider_listed_but_broken_names_the_reason():
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime has no CUDA provider")
    c = probe.check_ort_provider(ort, "CUDAExecutionProvider")
    if c.works:
        pytest.skip("CUDA provider works on this machine")
    # ORT silently fell back to the CPU; the check must say so and why (a missing CUDA library)
    assert ".so" in c.detail or "CUDA" in c.detail, c.detail


@pytest.fixture
def ort_cache(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    monkeypatch.setattr(probe, "cache_dir", lambda: tmp_path)
    return tmp_path / probe.ORT_CACHE_FILE


def test_ort_probe_is_cached_and_fresh_re_checks(ort_cache):
    first = probe.probe_onnxruntime(check_gpu_providers=False)
    assert not first.cached and first.checked_at is not None and ort_cache.is_file()
    assert first.check("CPUExecutionProvider").works
    second = probe.probe_onnxruntime(check_gpu_providers=False)
    assert second.cached and second.checked_at == first.checked_at
    assert second.providers == first.providers and second.provider_checks == first.provider_checks
    again = probe.probe_onnxruntime(check_gpu_providers=False, fresh=True)
    assert not again.cached and again.checked_at > first.checked_at


def test_ort_probe_cache_is_keyed_on_what_changes_the_outcome(ort_cache, monkeypatch):
    probe.probe_onnxruntime(check_gpu_providers=False)
    assert probe.probe_onnxruntime(check_gpu_providers=False).cached
    # a different GPU set or driver, a GPU check wanted, a new library path: each re-probes
    assert not probe.probe_onnxruntime(check_gpu_providers=False, gpu_key="550.54,GPU-1234").cached
    assert not probe.probe_onnxruntime(check_gpu_providers=True).cached
    monkeypatch.setenv("LD_LIBRARY_PATH", "/opt/cuda/lib64")
    assert not probe.probe_onnxruntime(check_gpu_providers=False).cached


def test_corrupt_ort_cache_is_ignored_and_rewritten(ort_cache):
    ort_cache.write_text("{not json")
    info = probe.probe_onnxruntime(check_gpu_providers=False)
    assert not info.cached and info.check("CPUExecutionProvider").works
    assert json.loads(ort_cache.read_text())["info"]["providers"] == info.providers


# ---------------------------------------------------------------------------------- snapshot
def test_snapshot_json_round_trip_and_never_imports_torch():
    code = ("import sys, json; from dlab.planner.probe import take_snapshot; s = take_snapshot(); "
            "print(json.dumps({'torch': 'torch' in sys.modules, 'snap': json.loads(s.to_json())}))")
    out = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert out["torch"] is False
    snap = HardwareSnapshot.model_validate(out["snap"])
    assert HardwareSnapshot.model_validate_json(snap.to_json()) == snap
    assert snap.cpu.logical_cores >= 1 and snap.memory.total_bytes > 0
    assert {d.role for d in snap.disks} == {"data", "cwd"}
    report = diagnose(snap)
    assert report.exit_code() == 0, [c for c in report.checks if c.status == "fail"]
