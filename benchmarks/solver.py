"""Solver speed on the paper's MobileNetV2-1.0 table with the synthetic importance table.

Prints the table-loading time (CSV parsing), the one-off DP1 + DP3 time, and the median of 20
``solve`` calls per budget (DP2 + reconstruction + merge-pattern cross-check). The original
pure-Python/pandas code takes 4.5–5.3 s per solve on 2 cores (spec §4.6).

    python benchmarks/solver.py
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from depthfx.solver import ImportanceTable, LatencyTable, solve

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
LATENCY = DATA / "paper_tables" / "mbv2_1.0" / "time_fish_gpu1_1228.csv"
IMPORTANCE = DATA / "mbv2_1.0_synthetic_importance_raw.csv"
BUDGETS = (18.0, 20.0, 22.1, 25.0)
RUNS = 20


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:8.2f}"


def main() -> None:
    t0 = time.perf_counter()
    lat = LatencyTable.read_csv(LATENCY)
    imp = ImportanceTable.read_csv(IMPORTANCE, score="val_acc", norm="single", alpha=1.6)
    t1 = time.perf_counter()
    lat.optimal()
    imp.extended()
    t2 = time.perf_counter()
    print(f"load tables (2 CSV files)   {_ms(t1 - t0)} ms")
    print(f"DP1 + DP3 (once per table)  {_ms(t2 - t1)} ms")
    print()
    print(" T0 (ms) | units | median solve (ms) | min (ms) | objective          | time (ms)")
    print("---------|-------|-------------------|----------|--------------------|----------")
    for budget in BUDGETS:
        times = []
        for _ in range(RUNS):
            start = time.perf_counter()
            sol = solve(lat, imp, budget, 20)
            times.append(time.perf_counter() - start)
        print(
            f" {budget:7g} | {sol.budget_units:5d} | {_ms(statistics.median(times)):>17} | "
            f"{_ms(min(times))} | {sol.objective:18.14f} | {sol.time:.4f}"
        )


if __name__ == "__main__":
    main()
