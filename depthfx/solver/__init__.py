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
from depthfx.solver.layermerge_dp import (
    LAYERMERGE_PREC,
    Child,
    LayerMergeSolution,
    solve_layermerge,
)
from depthfx.solver.layermerge_tables import (
    LayerMergeImportanceTable,
    LayerMergeLatencyTable,
    LayerMergeTable,
    Variant,
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
    "LAYERMERGE_PREC",
    "ChainSolution",
    "Child",
    "ExtendedImportanceTable",
    "ImportanceKey",
    "ImportanceTable",
    "LatencyKey",
    "LatencyTable",
    "LayerMergeImportanceTable",
    "LayerMergeLatencyTable",
    "LayerMergeSolution",
    "LayerMergeTable",
    "MergePattern",
    "OptimalLatencyTable",
    "Solution",
    "Variant",
    "extend_importance",
    "extended_blocks",
    "is_valid_block",
    "optimal_merge_pattern",
    "optimal_times",
    "solve",
    "solve_layermerge",
    "valid_blocks",
]
