"""Exceptions raised by depthfx. Each one says what went wrong and where."""

from __future__ import annotations


class DepthFXError(Exception):
    """Base class of every depthfx error; the CLI prints these as one line and exits 2."""


class InfeasibleBudget(DepthFXError, ValueError):
    """No configuration fits the latency budget; carries the minimum feasible budget (in
    ``unit``) and, from ``depthfx.plan``, that minimum as a ``fraction`` of the original's
    latency. Either one passed back as the budget, with the same tables, is feasible."""

    def __init__(
        self,
        budget: float,
        minimum: float,
        unit: str = "ms",
        detail: str = "",
        fraction: float | None = None,
    ) -> None:
        self.budget = budget
        self.minimum = minimum
        self.unit = unit
        self.fraction = fraction
        super().__init__(
            f"budget {budget:g} {unit} is infeasible: the fastest configuration the tables "
            f"allow needs at least {minimum!r} {unit}{detail}"
        )


class TableError(DepthFXError, ValueError):
    """A latency or importance table is malformed; the message names file, row and problem."""


class CaptureError(DepthFXError):
    """The model could not be traced into an fx graph; names the module and a fix."""


class MergeMismatch(DepthFXError):
    """The merged graph does not reproduce the prepared graph within tolerance."""


class FingerprintMismatch(DepthFXError):
    """A table was measured on another device/backend/setting than the one requested."""
