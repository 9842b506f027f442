"""Peak memory of the smallest built-in workload: `dlab generate image` with the shapes model.

Runs the real command in a subprocess and reads its peak RSS (ru_maxrss of the child), so the
doctor's RAM requirement (profiles/tiers.toml, builtin_workload) rests on a measurement.

    python bench/builtin_footprint.py [--batch 8]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as out:
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        r = subprocess.run([sys.executable, "-m", "dlab", "generate", "image", "a red circle on a black background",
                            "--steps", "20", "--batch", str(args.batch), "--seed", "0", "--out", out],
                           capture_output=True, text=True)
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if r.returncode:
        sys.exit(r.stderr)
    assert peak_kib >= before
    print(f"dlab generate image, batch {args.batch}, 20 steps: peak RSS {peak_kib / 1024**2:.2f} GiB")


if __name__ == "__main__":
    main()
