from __future__ import annotations

import json
import subprocess
import sys

import pytest

from dlab.profiles import example_machines


def dlab(*args):
    return subprocess.run([sys.executable, "-m", "dlab", *args], capture_output=True, text=True, timeout=120)


def test_doctor_on_this_machine_prints_a_full_report():
    r = dlab("doctor")
    assert r.returncode == 0, r.stderr
    for part in ("Machine", "CPU", "RAM", "torch", "onnxruntime", "Checks", "Tier:"):
        assert part in r.stdout
    assert r.stderr == ""


def test_doctor_json_is_the_report_and_reads_back(tmp_path):
    r = dlab("doctor", "--json")
    assert r.returncode == 0
    report = json.loads(r.stdout)
    assert {"snapshot", "checks", "tier"} <= set(report)
    saved = tmp_path / "me.json"
    saved.write_text(r.stdout)
    again = dlab("doctor", "--snapshot", str(saved), "--json")
    assert again.returncode == 0
    assert json.loads(again.stdout)["snapshot"] == report["snapshot"]


@pytest.mark.parametrize("name,tier", [("cpu_laptop", "Amuse-bouche"), ("appetizer", "Appetizer"),
                                       ("main_course", "Main Course"), ("dessert", "Dessert")])
def test_example_snapshots(name, tier):
    r = dlab("doctor", "--snapshot", str(example_machines()[name]), "--json")
    assert r.returncode == 0
    assert json.loads(r.stdout)["tier"]["tier_name"] == tier


@pytest.mark.parametrize(
    "content,needle",
    [(None, "no such file"), ("{not json", "not JSON"), ('{"taken_at": "2026-01-01T00:00:00Z", "cpu": {"physical_cores": "many"}}', "cpu.physical_cores"),
     ("[1, 2]", "expected a JSON object"), ('{"schema_version": 99}', "schema_version 99")],
)
def test_bad_snapshot_is_one_line_exit_2(tmp_path, content, needle):
    path = tmp_path / "snap.json"
    if content is not None:
        path.write_text(content)
    r = dlab("doctor", "--snapshot", str(path))
    assert r.returncode == 2
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in r.stderr


def test_failing_check_exits_1_and_strict_fails_warnings(tmp_path):
    data = json.loads(example_machines()["appetizer"].read_text())
    data["software"]["torch"]["build"] = "cpu"
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(data))
    r = dlab("doctor", "--snapshot", str(path))
    assert r.returncode == 1 and "✗" in r.stdout and "torch.build" in r.stdout
    laptop = str(example_machines()["cpu_laptop"])
    assert dlab("doctor", "--snapshot", laptop).returncode == 0
    assert dlab("doctor", "--snapshot", laptop, "--strict").returncode == 1


def test_bad_usage_exits_2():
    assert dlab("doctor", "--no-such-flag").returncode == 2
