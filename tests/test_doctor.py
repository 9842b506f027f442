from __future__ import annotations

import pytest

from dlab.planner import doctor as d
from dlab.planner.snapshot import GiB, OrtDistribution, ProviderCheck


def status(check, snap):
    return check(snap).status


# ----------------------------------------------------------------------------- nvidia.driver
def test_driver_ok_skipped_fail(machine):
    assert status(d.check_nvidia_driver, machine("appetizer")) == "ok"
    assert status(d.check_nvidia_driver, machine("cpu_laptop")) == "skipped"
    s = machine("cpu_laptop")
    s.nvidia.pci_devices = 1  # a card on the bus, but no driver
    c = d.check_nvidia_driver(s)
    assert c.status == "fail" and "PCI bus" in c.finding and "driver" in c.fix
    s = machine("cpu_laptop")
    s.nvidia.reason = "NVML failed to initialise (DriverNotLoaded: Driver Not Loaded)"
    assert status(d.check_nvidia_driver, s) == "fail"
    s = machine("appetizer")
    s.nvidia.gpus = []
    assert status(d.check_nvidia_driver, s) == "warn"


# --------------------------------------------------------------------- gpu.compute_capability
@pytest.mark.parametrize("cc,expected", [((8, 9), "ok"), ((7, 5), "ok"), ((6, 1), "warn"), ((3, 7), "fail")])
def test_compute_capability(machine, cc, expected):
    s = machine("appetizer")
    s.nvidia.gpus[0].compute_capability = cc
    assert status(d.check_compute_capability, s) == expected
    assert status(d.check_compute_capability, machine("cpu_laptop")) == "skipped"


def test_compute_capability_unreadable_warns(machine):
    s = machine("appetizer")
    s.nvidia.gpus[0].compute_capability = None
    s.nvidia.gpus[0].unavailable["compute_capability"] = "NotSupported"
    c = d.check_compute_capability(s)
    assert c.status == "warn" and "NotSupported" in c.finding


# ----------------------------------------------------------------------------- gpu.precision
def test_precision(machine):
    s = machine("appetizer")
    c = d.check_gpu_precision(s)
    assert c.status == "ok" and "bf16" in c.finding
    s.nvidia.gpus[0].name, s.nvidia.gpus[0].compute_capability = "NVIDIA GeForce GTX 1660 SUPER", (7, 5)
    c = d.check_gpu_precision(s)
    assert c.status == "warn" and "GTX 16" in c.finding
    s.nvidia.gpus[0].name, s.nvidia.gpus[0].compute_capability = "NVIDIA GeForce GTX 1080 Ti", (6, 1)
    c = d.check_gpu_precision(s)
    assert c.status == "warn" and "Pascal" in c.finding
    s.nvidia.gpus[0].name, s.nvidia.gpus[0].compute_capability = "NVIDIA GeForce RTX 2080", (7, 5)
    c = d.check_gpu_precision(s)
    assert c.status == "ok" and "bf16 needs compute capability" in c.finding
    assert status(d.check_gpu_precision, machine("cpu_laptop")) == "skipped"


# ------------------------------------------------------------------------------- torch.build
def test_torch_build(machine):
    assert status(d.check_torch_build, machine("appetizer")) == "ok"
    assert status(d.check_torch_build, machine("cpu_laptop")) == "ok"
    s = machine("appetizer")
    s.software.torch.build, s.software.torch.cuda_version = "cpu", None
    c = d.check_torch_build(s)
    assert c.status == "fail" and "CPU" in c.finding.upper()
    # the fix names a CUDA index the driver (12.6) can run
    assert c.fix.endswith("/whl/cu126")
    s.software.torch.installed = False
    assert status(d.check_torch_build, s) == "fail"


def test_torch_index_url_follows_the_driver():
    assert d.torch_index_url((12, 2)).endswith("cu121")
    assert d.torch_index_url((13, 0)).endswith("cu130")
    assert d.torch_index_url((11, 4)).endswith("cu118")


# -------------------------------------------------------------------------- torch.cuda_driver
@pytest.mark.parametrize(
    "torch_cuda,driver,expected",
    [((12, 4), (12, 6), "ok"), ((12, 8), (12, 6), "warn"), ((13, 0), (12, 6), "fail"), ((12, 6), (12, 6), "ok")],
)
def test_torch_cuda_vs_driver(machine, torch_cuda, driver, expected):
    s = machine("appetizer")
    s.software.torch.cuda_version = torch_cuda
    s.nvidia.cuda_driver_version = driver
    assert status(d.check_torch_cuda_vs_driver, s) == expected


def test_torch_cuda_vs_driver_skipped(machine):
    assert status(d.check_torch_cuda_vs_driver, machine("cpu_laptop")) == "skipped"
    s = machine("appetizer")
    s.nvidia.cuda_driver_version = None
    assert status(d.check_torch_cuda_vs_driver, s) == "skipped"


# ------------------------------------------------------------------------------- ort.install
def test_ort_install(machine):
    assert status(d.check_ort_install, machine("appetizer")) == "ok"
    s = machine("appetizer")
    s.software.onnxruntime.distributions.append(OrtDistribution(name="onnxruntime", version="1.20.1"))
    c = d.check_ort_install(s)
    assert c.status == "fail" and "onnxruntime-gpu and onnxruntime" in c.finding
    assert c.fix == "pip uninstall -y onnxruntime-gpu onnxruntime && pip install onnxruntime-gpu"
    s = machine("cpu_laptop")
    s.software.onnxruntime.distributions = []
    c = d.check_ort_install(s)
    assert c.status == "warn" and c.fix == "pip install onnxruntime"
    s = machine("appetizer")
    s.software.onnxruntime.provider_checks[0] = ProviderCheck(provider="CPUExecutionProvider", works=False, detail="boom")
    assert status(d.check_ort_install, s) == "fail"


# ---------------------------------------------------------------------------------- ort.cuda
def test_ort_cuda(machine):
    assert status(d.check_ort_cuda, machine("appetizer")) == "ok"
    assert status(d.check_ort_cuda, machine("cpu_laptop")) == "skipped"
    s = machine("appetizer")
    s.software.onnxruntime.provider_checks[1] = ProviderCheck(
        provider="CUDAExecutionProvider", works=False, detail="libcublasLt.so.12: cannot open shared object file"
    )
    c = d.check_ort_cuda(s)
    assert c.status == "fail" and "libcublasLt" in c.finding and "onnxruntime-gpu[cuda,cudnn]" in c.fix
    s = machine("appetizer")
    s.software.onnxruntime.providers = ["CPUExecutionProvider"]
    assert status(d.check_ort_cuda, s) == "warn"


# ----------------------------------------------------------------------------- gpu.vram_free
def test_vram_in_use(machine):
    assert status(d.check_vram_in_use, machine("appetizer")) == "ok"
    s = machine("appetizer")
    g = s.nvidia.gpus[0]
    g.memory_free_bytes = g.memory_total_bytes - 5 * GiB
    c = d.check_vram_in_use(s)
    assert c.status == "warn" and "5.0 of 12.0 GiB in use" in c.finding
    assert status(d.check_vram_in_use, machine("cpu_laptop")) == "skipped"


# ----------------------------------------------------------------------------- RAM and disk
def test_ram_and_disk(machine):
    s = machine("cpu_laptop")
    assert status(d.check_ram, s) == "ok" and status(d.check_disk, s) == "ok"
    s.memory.available_bytes = int(0.2 * GiB)
    assert status(d.check_ram, s) == "fail"
    s = machine("cpu_laptop")
    s.disks[0].free_bytes = int(0.1 * GiB)
    assert status(d.check_disk, s) == "fail"
    s = machine("cpu_laptop")
    s.disks[1].free_bytes = int(0.1 * GiB)  # only the cwd is short: outputs can go elsewhere
    assert status(d.check_disk, s) == "warn"


# ---------------------------------------------------------------------------------- cpu.bf16
def test_cpu_bf16(machine):
    assert status(d.check_cpu_bf16, machine("appetizer")) == "ok"
    laptop = machine("cpu_laptop")
    c = d.check_cpu_bf16(laptop)
    assert c.status == "warn" and "AVX2" in c.finding
    laptop.cpu.amx_bf16 = True
    assert "AMX" in d.check_cpu_bf16(laptop).finding
    s = machine("appetizer")
    s.cpu.avx512_bf16 = False
    assert status(d.check_cpu_bf16, s) == "ok"  # the GPU does the work


# ------------------------------------------------------------------------------ whole report
def test_exit_codes(machine):
    clean = d.diagnose(machine("dessert"))
    assert [c.status for c in clean.checks] == ["ok"] * len(d.CHECKS)
    assert clean.exit_code() == 0 and clean.exit_code(strict=True) == 0
    laptop = d.diagnose(machine("cpu_laptop"))  # warns about fp32-only CPU
    assert laptop.exit_code() == 0 and laptop.exit_code(strict=True) == 1
    s = machine("appetizer")
    s.software.torch.build = "cpu"
    assert d.diagnose(s).exit_code() == 1


def test_every_check_has_an_id_and_one_line(machine):
    for name in ("cpu_laptop", "appetizer", "main_course", "dessert"):
        checks = d.run_checks(machine(name))
        ids = [c.id for c in checks]
        assert len(set(ids)) == len(ids) == len(d.CHECKS)
        for c in checks:
            assert c.finding.strip() and "\n" not in c.finding, (name, c.id)
            assert "\n" not in c.fix, (name, c.id)
            if c.status in ("warn", "fail"):
                assert c.fix.strip(), (name, c.id)  # a problem always comes with a fix
