from __future__ import annotations

import pytest

from dlab.planner.snapshot import GiB
from dlab.planner.tiers import match_tier, unmet_requirements
from dlab.profiles import tiers

EXPECTED = {
    "cpu_laptop": "amuse-bouche",
    "appetizer": "appetizer",
    "main_course": "main-course",
    "dessert": "dessert",
}


@pytest.mark.parametrize("name,tier", sorted(EXPECTED.items()))
def test_each_example_gets_the_tier_it_was_built_for(machine, name, tier):
    assert match_tier(machine(name)).tier_id == tier


def _set_ram(s, gib):
    s.memory.total_bytes = int(gib * GiB)


def _set_vram(s, gib, index=0):
    s.nvidia.gpus[index].memory_total_bytes = int(gib * GiB)


def test_appetizer_boundaries(machine):
    ladder = tiers()
    req = ladder.tier[ladder.index("appetizer")].requirements
    s = machine("appetizer")
    # exactly at every threshold: meets it
    _set_ram(s, req.min_ram_gib)
    _set_vram(s, req.min_vram_gib)
    s.cpu.physical_cores = req.min_physical_cores
    assert match_tier(s).tier_id == "appetizer"
    # one step below each threshold, one at a time: falls to the floor, naming that requirement
    for tweak, name in [
        (lambda x: _set_ram(x, req.min_ram_gib - 0.01), "RAM"),
        (lambda x: _set_vram(x, req.min_vram_gib - 0.01), "GPU"),
        (lambda x: setattr(x.cpu, "physical_cores", req.min_physical_cores - 1), "CPU cores"),
    ]:
        t = machine("appetizer")
        tweak(t)
        m = match_tier(t)
        assert m.tier_id == "amuse-bouche"
        assert m.next_tier_id == "appetizer"
        assert [u.requirement for u in m.blockers] == [name]


def test_main_course_boundaries(machine):
    s = machine("main_course")
    _set_vram(s, 23.0)
    _set_ram(s, 60.0)
    assert match_tier(s).tier_id == "main-course"
    _set_vram(s, 22.99)
    m = match_tier(s)
    assert m.tier_id == "appetizer"
    assert [u.requirement for u in m.blockers] == ["GPU"]


def test_vram_is_never_summed_across_gpus(machine):
    # two 12 GB cards are 24 GB in sum, but no single card holds a Main Course workload
    s = machine("dessert")
    for i in range(2):
        _set_vram(s, 11.99, i)
    m = match_tier(s)
    assert m.tier_id == "appetizer"
    assert any(u.requirement == "GPU" for u in m.blockers)


def test_dessert_needs_two_big_gpus_cores_and_ram(machine):
    s = machine("dessert")
    _set_vram(s, 11.99, 1)  # second card too small
    m = match_tier(s)
    assert m.tier_id == "main-course"
    assert [u.requirement for u in m.blockers] == ["GPU"]
    assert m.blockers[0].have.startswith("1 (")

    s = machine("dessert")
    s.cpu.physical_cores = 11
    _set_ram(s, 119.9)
    m = match_tier(s)
    assert m.tier_id == "main-course"
    assert {u.requirement for u in m.blockers} == {"CPU cores", "RAM"}


def test_unknown_values_do_not_meet_requirements(machine):
    s = machine("appetizer")
    s.memory.total_bytes = None
    s.cpu.physical_cores = None
    m = match_tier(s)
    assert m.tier_id == "amuse-bouche"
    assert {u.have for u in m.blockers} == {"unknown"}


def test_cpu_laptop_names_every_unmet_appetizer_requirement(machine):
    m = match_tier(machine("cpu_laptop"))
    assert m.next_tier_id == "appetizer"
    reqs = {u.requirement: u for u in m.blockers}
    assert set(reqs) == {"GPU", "RAM"}  # 12 physical cores already meet the 8-core requirement
    assert reqs["GPU"].have == "no NVIDIA GPU"


def test_top_tier_has_no_next(machine):
    m = match_tier(machine("dessert"))
    assert m.next_tier_id is None and m.blockers == []
    assert unmet_requirements(machine("dessert"), tiers().tier[-1]) == []
