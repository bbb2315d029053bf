"""Table-level two-stage DP of Kim et al. (ICML 2023): latency/importance tables and `solve`."""

from depthfx.blocks import extended_blocks, is_valid_block, valid_blocks
from depthfx.solver.dp import (
    BUDGET_UNITS,
    ChainSolution,
    MergePattern,
    Solution,
    extend_importance,
    optimal_merge_pattern,
    optimal_times,
    solve,
)
from depthfx.solver.tables import (
    ExtendedImportanceTable,
    ImportanceKey,
    ImportanceTable,
    LatencyKey,
    LatencyTable,
    OptimalLatencyTable,
)

__all__ = [
    "BUDGET_UNITS",
    "ChainSolution",
    "ExtendedImportanceTable",
    "ImportanceKey",
    "ImportanceTable",
    "LatencyKey",
    "LatencyTable",
    "MergePattern",
    "OptimalLatencyTable",
    "Solution",
    "extend_importance",
    "extended_blocks",
    "is_valid_block",
    "optimal_merge_pattern",
    "optimal_times",
    "solve",
    "valid_blocks",
]
