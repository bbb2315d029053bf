"""depthfx: exact, latency-aware depth compression of CNNs as a torch.fx compiler pass.

Importing depthfx is cheap: it imports neither ONNX Runtime nor TensorRT.
"""

from typing import Any

# Imported eagerly (it is light: no numpy/torch at import) because the submodule shares the
# function's name: a lazy lookup would be shadowed by the module once anything imports it.
from depthfx.benchmark import benchmark, compare
from depthfx.errors import (
    CaptureError,
    DepthFXError,
    FingerprintMismatch,
    InfeasibleBudget,
    MergeMismatch,
    TableError,
)
from depthfx.finetune import finetune  # eager for the same reason; torch loads on call

__version__ = "0.1.0"

#: Public names imported on first access, so ``import depthfx`` stays cheap.
_LAZY = {
    "export_onnx": "depthfx.export",
    "analyze": "depthfx.passes.analyze",
    "Analysis": "depthfx.records",
    "register_leaf": "depthfx.patterns",
    "register_activation": "depthfx.patterns",
    "prepare": "depthfx.passes.prepare",
    "convert": "depthfx.passes.convert",
    "Plan": "depthfx.plans",
    "plan": "depthfx.api",
    "compile": "depthfx.api",
    "LatencyTable": "depthfx.solver",
    "ImportanceTable": "depthfx.solver",
    "solve": "depthfx.solver",
    "recalibrate_bn": "depthfx.measure.bn_recalibration",
}

__all__ = [
    "Analysis",
    "CaptureError",
    "DepthFXError",
    "FingerprintMismatch",
    "ImportanceTable",
    "InfeasibleBudget",
    "LatencyTable",
    "MergeMismatch",
    "Plan",
    "TableError",
    "__version__",
    "analyze",
    "benchmark",
    "compare",
    "compile",
    "convert",
    "export_onnx",
    "finetune",
    "plan",
    "prepare",
    "recalibrate_bn",
    "register_activation",
    "register_leaf",
    "solve",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'depthfx' has no attribute {name!r}")
