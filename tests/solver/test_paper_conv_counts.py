"""Cross-check against figures the spec verified by running the original code (spec §5.5).

Merging MobileNetV2-1.0 with the DP's solutions for the synthetic importance table at
T0 = 18/20/22.1/25 ms leaves 32/36/38/43 convs including the stem and the last conv, i.e.
|S| = 30/34/36/41 merge groups in the 50-conv chain. These numbers come from the original
implementation, not from depthfx, so they check the solver independently.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from depthfx.solver import ImportanceTable, LatencyTable, solve

CONVS_WITH_STEM_AND_LAST = {18.0: 32, 20.0: 36, 22.1: 38, 25.0: 43}


@pytest.mark.parametrize(("budget", "convs"), sorted(CONVS_WITH_STEM_AND_LAST.items()))
def test_conv_counts_match_the_original_code(data_dir: Path, budget: float, convs: int) -> None:
    latency = LatencyTable.read_csv(data_dir / "paper_tables/mbv2_1.0/time_fish_gpu1_1228.csv")
    importance = ImportanceTable.read_csv(
        data_dir / "mbv2_1.0_synthetic_importance_raw.csv",
        score="val_acc",
        norm="single",
        alpha=1.6,
    )
    solution = solve(latency, importance, budget=budget, prec=20)
    assert len(solution.merge_pos) + 2 == convs
