from __future__ import annotations

import re

import pytest

from dlab.errors import ProfileError
from dlab.profiles import PROFILES_DIR, gpu_catalog, load_gpu_catalog, load_tiers, tiers

REQUIRED_CARDS = [
    "rtx-3060-12gb", "rtx-3090", "rtx-4060-ti-16gb", "rtx-4070", "rtx-4070-ti", "rtx-4070-ti-super",
    "rtx-4080", "rtx-4090", "rtx-5070", "rtx-5080", "rtx-5090", "rtx-a6000", "l40s", "h100-sxm", "h200-sxm",
]


def test_shipped_catalog_loads_with_the_cards_people_buy():
    cat = gpu_catalog()
    ids = {g.id for g in cat.gpu}
    missing = [c for c in REQUIRED_CARDS if c not in ids]
    assert not missing, missing
    assert any(g.id.startswith("a100") for g in cat.gpu)
    assert any(g.id.startswith("h100") for g in cat.gpu)
    for g in cat.gpu:
        for field in ("specs", "tensor", "compute_capability", "price"):
            assert getattr(g.sources, field).strip(), (g.id, field)


def test_catalog_reference_figures():
    g = gpu_catalog().get("rtx-4090")
    assert (g.vram_gb, g.memory_bandwidth_gbs, g.compute_capability) == (24, 1008, "8.9")
    assert g.fp16_tensor_tflops == pytest.approx(165.2, rel=0.01)
    assert gpu_catalog().get("rtx-4070-ti").vram_gb == 12
    # bf16 needs Ampere or newer
    for g in gpu_catalog().gpu:
        assert (g.bf16_tensor_tflops > 0) == (g.cc >= (8, 0)), g.id


@pytest.mark.parametrize(
    "nvml_name,vram_gb,expected",
    [
        ("NVIDIA GeForce RTX 4070 Ti SUPER", 16, "rtx-4070-ti-super"),
        ("NVIDIA GeForce RTX 4070 Ti", 12, "rtx-4070-ti"),
        ("NVIDIA GeForce RTX 4070", 12, "rtx-4070"),
        ("NVIDIA GeForce RTX 4060 Ti", 16, "rtx-4060-ti-16gb"),
        ("NVIDIA GeForce RTX 4060 Ti", 8, "rtx-4060-ti-8gb"),
        ("NVIDIA H100 80GB HBM3", 80, "h100-sxm"),
        ("NVIDIA L40S", 48, "l40s"),
        ("NVIDIA L40", 48, None),  # not "L4"
        ("NVIDIA GeForce RTX 3080 Ti", 12, None),  # not the plain 3080
        ("NVIDIA GeForce RTX 4090 Laptop GPU", 16, None),  # a different card under the same number
        ("Some Future GPU 9000", 64, None),
    ],
)
def test_match_by_nvml_name(nvml_name, vram_gb, expected):
    spec = gpu_catalog().match(nvml_name, int(vram_gb * 1e9))
    assert (spec.id if spec else None) == expected


def _gpu_toml_with(tmp_path, replace_from, replace_to):
    text = (PROFILES_DIR / "gpus.toml").read_text()
    assert replace_from in text
    bad = tmp_path / "gpus.toml"
    bad.write_text(text.replace(replace_from, replace_to, 1))
    return bad


def test_catalog_error_names_file_entry_and_field(tmp_path):
    text = (PROFILES_DIR / "gpus.toml").read_text()
    first_vram = re.search(r"^vram_gb = .*$", text, re.M).group(0)
    bad = _gpu_toml_with(tmp_path, first_vram, 'vram_gb = "lots"')
    with pytest.raises(ProfileError) as e:
        load_gpu_catalog(bad)
    msg = str(e.value)
    assert str(bad) in msg and "gpu[0]" in msg and "vram_gb" in msg
    assert "\n" not in msg


def test_catalog_rejects_a_figure_without_source(tmp_path):
    text = (PROFILES_DIR / "gpus.toml").read_text()
    first_price_src = re.search(r"^price = .*$", text, re.M).group(0)
    bad = _gpu_toml_with(tmp_path, first_price_src, "")
    with pytest.raises(ProfileError, match=r"sources\.price"):
        load_gpu_catalog(bad)


def test_catalog_rejects_bad_compute_capability_and_duplicates(tmp_path):
    text = (PROFILES_DIR / "gpus.toml").read_text()
    cc = re.search(r'^compute_capability = ".*"$', text, re.M).group(0)
    with pytest.raises(ProfileError, match="MAJOR.MINOR"):
        load_gpu_catalog(_gpu_toml_with(tmp_path, cc, 'compute_capability = "eight"'))
    first_id = re.search(r'^id = ".*"$', text, re.M).group(0)
    second_id = re.findall(r'^id = ".*"$', text, re.M)[1]
    dup = tmp_path / "dup.toml"
    dup.write_text(text.replace(second_id, first_id))
    with pytest.raises(ProfileError, match="duplicate gpu id"):
        load_gpu_catalog(dup)


def test_not_toml_and_missing_file(tmp_path):
    broken = tmp_path / "gpus.toml"
    broken.write_text("[[gpu]\nid = ")
    with pytest.raises(ProfileError, match="not valid TOML"):
        load_gpu_catalog(broken)
    with pytest.raises(ProfileError, match="no such file"):
        load_gpu_catalog(tmp_path / "absent.toml")


def test_tiers_validate(tmp_path):
    ladder = tiers()
    assert [t.id for t in ladder.tier] == ["amuse-bouche", "appetizer", "main-course", "dessert"]
    text = (PROFILES_DIR / "tiers.toml").read_text()
    bad = tmp_path / "tiers.toml"
    bad.write_text(text.replace("min_ram_gib = 30 ", "min_ram_gib = -30 ", 1))
    with pytest.raises(ProfileError) as e:
        load_tiers(bad)
    assert "tier[1] (appetizer).requirements.min_ram_gib" in str(e.value)
    bad.write_text(text.replace('requirements = "dlab seed plan: Appetizer', 'note = "x', 1))
    with pytest.raises(ProfileError, match="sources.requirements is missing"):
        load_tiers(bad)
