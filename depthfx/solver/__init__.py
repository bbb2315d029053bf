"""Table-level two-stage DP of Kim et al. (ICML 2023): latency/importance tables and `solve`."""

from depthfx.solver.blocks import extended_blocks, is_valid_block, valid_blocks

__all__ = ["extended_blocks", "is_valid_block", "valid_blocks"]
