"""Exact float64 weight algebra: BN folding, conv composition, residual fusion."""
