"""`dlab doctor` wall time against `python -m torch.utils.collect_env`, measured in one run.

Both are "tell me about this machine's ML setup" commands; collect_env imports torch and shells out,
dlab doctor must not import torch. Goal: ratio ≤ 0.2. Runs are interleaved and the median of each
is reported, so background load hits both alike.

    python bench/doctor_startup.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time


def wall(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    dlab = [shutil.which("dlab") or sys.executable, "doctor"] if shutil.which("dlab") else [sys.executable, "-m", "dlab", "doctor"]
    collect = [sys.executable, "-m", "torch.utils.collect_env"]
    wall(dlab), wall(collect)  # warm the page cache for both
    d, c = [], []
    for _ in range(args.repeat):
        d.append(wall(dlab))
        c.append(wall(collect))
    dm, cm = statistics.median(d), statistics.median(c)
    print(f"dlab doctor                       median {dm:6.3f} s  (runs: {', '.join(f'{x:.3f}' for x in d)})")
    print(f"python -m torch.utils.collect_env median {cm:6.3f} s  (runs: {', '.join(f'{x:.3f}' for x in c)})")
    print(f"ratio doctor / collect_env = {dm / cm:.3f}  (goal ≤ 0.2)")


if __name__ == "__main__":
    main()
