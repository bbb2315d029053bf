"""Hand-built chains whose answers follow from the spec's tie rules alone (§2.4, §3.5, §4.2,
§4.3): strict DP1/DP3 splits, rounding to 7 decimals, the integer-cost tie-break, the final
argmax without rounding and the base case t = 0 … T−1."""

from __future__ import annotations

import pytest

from depthfx import InfeasibleBudget
from depthfx.solver import ImportanceTable, LatencyTable, solve


def _lat(times: dict[tuple[int, int], float]) -> LatencyTable:
    return LatencyTable.from_entries(times)


def _imp(scores: dict[tuple[int, int, int, int], float]) -> ImportanceTable:
    return ImportanceTable.from_entries(scores, norm="none")


def test_dp1_ties_keep_direct_block_then_smallest_split() -> None:
    lat = _lat({(0, 1): 1.0, (1, 2): 1.0, (2, 3): 1.0, (0, 2): 2.0, (1, 3): 2.0, (0, 3): 5.0})
    opt = lat.optimal()
    assert opt.breaks[0, 0, 2] == (0, 2)  # 1 + 1 == 2: the direct block wins the tie
    assert opt.times[0, 0, 3] == 3.0
    assert opt.breaks[0, 0, 3] == (0, 1, 3)  # k = 1 and k = 2 both give 3: smallest k
    assert opt.stdevs[0, 0, 3] == 0.0


def test_dp3_ties_keep_direct_entry() -> None:
    h = {(0, 1, 1, 1): 0.0, (0, 1, 1, 0): 0.5, (1, 2, 1, 1): 0.0, (1, 2, 0, 1): 0.5}
    ext = _imp({**h, (0, 2, 1, 1): 1.0}).extended()
    assert ext.breaks[0, 0, 2, 1, 1] == (0, 2)
    ext = _imp({**h, (0, 2, 1, 1): 0.75}).extended()
    assert ext.breaks[0, 0, 2, 1, 1] == (0, 1, 2) and ext.values[0, 0, 2, 1, 1] == 1.0


def _two_ways(delta: float, direct_time: float) -> tuple[LatencyTable, ImportanceTable]:
    """Reach position 2 directly (scanned first, i = 0) or through position 1 (i = 1)."""
    lat = _lat({(0, 1): 0.25, (1, 2): 0.25, (0, 2): direct_time})
    imp = _imp({(0, 1, 1, 1): 0.5, (1, 2, 1, 1): 0.5 + delta, (0, 2, 1, 1): 1.0})
    return lat, imp


def test_rounded_tie_keeps_cheaper_incumbent() -> None:
    lat, imp = _two_ways(4e-8, 0.3)  # direct: 3 units; via 1: 2 + 2 units
    sol = solve(lat, imp, 1.0, prec=10)
    # 1.00000004 rounds to 1.0: a tie, and the via-1 candidate is not cheaper
    assert (sol.act_pos, sol.objective, sol.time_units) == ([2], 1.0, 3)


def test_rounding_is_to_seven_decimals() -> None:
    lat, imp = _two_ways(3e-7, 0.3)
    sol = solve(lat, imp, 1.0, prec=10)
    assert sol.act_pos == [1, 2] and sol.objective == 0.5 + (0.5 + 3e-7)


def test_rounded_tie_takes_strictly_cheaper_candidate() -> None:
    # T_opt(0, 2) = 0.25 + 0.25 via DP1 costs ⌊5.0⌋ = 5 units; the two blocks cost 2 + 2
    lat, imp = _two_ways(-4e-8, 0.55)
    sol = solve(lat, imp, 1.0, prec=10)
    assert sol.act_pos == [1, 2] and sol.time_units == 4
    assert sol.objective == 0.5 + (0.5 - 4e-8)  # lower than 1.0, yet chosen


def test_final_argmax_is_exact_and_prefers_no_activation() -> None:
    lat = _lat({(0, 1): 0.5})
    tie = solve(lat, _imp({(0, 1, 1, 1): 1.0, (0, 1, 1, 0): 1.0}), 1.0, prec=10)
    assert tie.act_pos == [] and tie.merge_pos == [1]
    tiny = solve(lat, _imp({(0, 1, 1, 1): 1.0 + 2e-16, (0, 1, 1, 0): 1.0}), 1.0, prec=10)
    assert tiny.act_pos == [1]  # no rounding at the final argmax


def test_base_case_excludes_t_equal_budget() -> None:
    """A configuration of cost 0 units never reaches D(T, L): the base is t = 0 … T−1."""
    # g = 0 and 0; T_opt(0, 2) = 0.05 + 0.05 (DP1 split), g = 1
    lat = _lat({(0, 1): 0.05, (1, 2): 0.05, (0, 2): 0.5})
    imp = _imp({(0, 1, 1, 1): 5.0, (1, 2, 1, 1): 5.0, (0, 2, 1, 1): 1.0})
    with pytest.raises(InfeasibleBudget) as err:
        solve(lat, imp, 0.05, prec=10)
    assert err.value.minimum == 0.1
    sol = solve(lat, imp, 0.3, prec=10)  # the better cost-0 path (value 10) stays unreachable
    assert (sol.act_pos, sol.merge_pos, sol.objective, sol.time_units) == ([2], [1, 2], 1.0, 1)
