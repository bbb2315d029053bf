"""depthfx: exact, latency-aware depth compression of CNNs as a torch.fx compiler pass.

Importing depthfx is cheap: it imports neither ONNX Runtime nor TensorRT.
"""

from depthfx.errors import (
    CaptureError,
    DepthFXError,
    FingerprintMismatch,
    InfeasibleBudget,
    MergeMismatch,
    TableError,
)

__version__ = "0.1.0"

__all__ = [
    "CaptureError",
    "DepthFXError",
    "FingerprintMismatch",
    "InfeasibleBudget",
    "MergeMismatch",
    "TableError",
    "__version__",
]
