"""Table-level DPs: the two-stage DP of Kim et al. (ICML 2023) and LayerMerge's (ICML 2024).

One concept per module, bottom-up: ``table_io`` (CSV/JSON formats and validation),
``optimal_times`` (DP1, T_opt), ``extend_importance`` (DP3, I_ext), ``latency_table`` and
``importance_table`` (the tables, raw and derived), ``merge_pattern`` (the fastest S ⊇ A on the
raw latency table, spec §4.5), ``budget_dp`` (DP2: :func:`solve`) and ``fastest`` (the
fastest configuration, :func:`solve_fastest`: ``budget="fastest"`` and the minimum budget);
LayerMerge's tables (``layermerge_tables``: one row per block and merged-conv variant) and its
single-stage DP (``layermerge_dp``: :func:`solve_layermerge`); ``combined_dp``
(:func:`solve_combined`: both methods' rows in one DP, spec §7.19).
"""

from depthfx.blocks import extended_blocks, is_valid_block, valid_blocks
from depthfx.solver.budget_dp import (
    BUDGET_UNITS,
    ChainSolution,
    Solution,
    round7,
    solve,
    units_per_ms,
)
from depthfx.solver.combined_dp import CombinedChain, CombinedSolution, solve_combined
from depthfx.solver.extend_importance import extend_importance
from depthfx.solver.fastest import FASTEST, at_smallest_budget, solve_fastest
from depthfx.solver.importance_table import (
    NORMS,
    ExtendedImportanceTable,
    ImportanceKey,
    ImportanceTable,
    Norm,
)
from depthfx.solver.latency_table import LatencyKey, LatencyTable, OptimalLatencyTable
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
from depthfx.solver.merge_pattern import MergePattern, optimal_merge_pattern
from depthfx.solver.optimal_times import optimal_times
from depthfx.solver.table_io import csv_text

__all__ = [
    "BUDGET_UNITS",
    "FASTEST",
    "LAYERMERGE_PREC",
    "NORMS",
    "ChainSolution",
    "Child",
    "CombinedChain",
    "CombinedSolution",
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
    "Norm",
    "OptimalLatencyTable",
    "Solution",
    "Variant",
    "at_smallest_budget",
    "csv_text",
    "extend_importance",
    "extended_blocks",
    "is_valid_block",
    "optimal_merge_pattern",
    "optimal_times",
    "round7",
    "solve",
    "solve_combined",
    "solve_fastest",
    "solve_layermerge",
    "units_per_ms",
    "valid_blocks",
]
