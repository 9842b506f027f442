"""Predicted vs published memory for the real models: `dlab.planner.calibration` as a table.

    python bench/plan_calibration.py [--json]
"""

from __future__ import annotations

import argparse
import json

from dlab.planner.calibration import calibration_rows, time_rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    r = calibration_rows()
    if args.json:
        print(json.dumps(r, indent=2))
        return
    print(f"{'model':13} {'figure':10} {'prec':5} {'res':10} {'b':>2} {'offload':10} {'published':>9} {'predicted':>9} {'ratio':>6}")
    for x in r:
        fig = "OOM at" if x["outcome"] == "oom" else {"exact": x["what"], "lower": "at least", "upper": "enough"}[x["bound"]]
        print(f"{x['model']:13} {fig:10} {x['precision']:5} {x['resolution']:10} {x['batch']:>2} {x['offload']:10} "
              f"{x['published_gib']:9.2f} {x['predicted_gib']:9.2f} {x['ratio']:6.2f} {'ok' if x['ok'] else 'MISS'}")
    print(f"{sum(x['ok'] for x in r)}/{len(r)} hold: measured peaks within ±20 %; 'at least' rows ≥ 80 %; 'enough' rows"
          " (a tool's stated minimum card) at or above dlab's leanest need; OOM rows below dlab's need")
    print(f"\n{'model':13} {'gpu':18} {'figure':18} {'published':>9} {'predicted':>9} {'ratio':>6}")
    for x in time_rows():
        pred = "-" if x["predicted"] is None else f"{x['predicted']:9.2f}"
        ratio = "-" if x["ratio"] is None else f"{x['ratio']:6.2f}"
        print(f"{x['model']:13} {x['gpu'][:18]:18} {x['what'] + ' b' + str(x.get('batch', 1)):18} {x['published']:9.2f} {pred:>9} {ratio:>6} {x['note']}")


if __name__ == "__main__":
    main()
