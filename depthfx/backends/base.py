"""The backend protocol, the name registry, runnables and fingerprints.

Backends register by name and are imported only when asked for, so ``import depthfx`` never
imports ONNX Runtime, TensorRT or torch-tensorrt. Every measurement carries a
:class:`Fingerprint` of the machine and settings it came from, because latencies from another
device, backend or thread count must never be mixed into one table.
"""

from __future__ import annotations

import functools
import importlib
import json
import platform
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from depthfx.errors import DepthFXError, FingerprintMismatch

if TYPE_CHECKING:
    import numpy as np
    import torch

    from depthfx.backends.timing import BlockClock, Timing

#: Built-in backends and the module that registers each; imported on first use only.
_LAZY: dict[str, str] = {
    "onnxruntime": "depthfx.backends.onnxruntime",
    "torch": "depthfx.backends.torch",
    "tensorrt": "depthfx.backends.tensorrt",
}
_REGISTRY: dict[str, type[Backend]] = {}

B = TypeVar("B", bound=type)


@runtime_checkable
class Backend(Protocol):
    """Turns a model plus fixed example inputs into a :class:`Runnable` ready to be timed.

    ``model`` is an ``nn.Module``, an ``onnx.ModelProto`` or an ``.onnx`` path, as the backend
    supports; ``example_inputs`` may be omitted for ONNX models with static input shapes.
    """

    name: str
    device: str

    def prepare(
        self, model: Any, example_inputs: Sequence[torch.Tensor] | None = None
    ) -> Runnable: ...


def register_backend(name: str) -> Callable[[B], B]:
    """Class decorator: make ``get_backend(name, **opts)`` construct this class."""

    def decorate(cls: B) -> B:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def available_backends() -> list[str]:
    """Names ``get_backend`` accepts (built-ins are listed even before they are imported)."""
    return sorted(set(_LAZY) | set(_REGISTRY))


def get_backend(name: str, **opts: Any) -> Backend:
    """Construct backend ``name`` with ``opts``, importing its module only now."""
    if name not in _REGISTRY and name in _LAZY:
        importlib.import_module(_LAZY[name])
    if name not in _REGISTRY:
        raise DepthFXError(
            f"unknown backend {name!r}; available: {', '.join(available_backends())}"
        )
    return _REGISTRY[name](**opts)


@dataclass(eq=False)
class Runnable:
    """One model bound to fixed, pre-allocated inputs: each call runs one inference.

    ``synchronize`` waits for queued device work (GPU backends); ``clock`` is the block
    clock the harness should use (CUDA events on GPU, wall clock otherwise); ``outputs`` runs
    once and returns the outputs on the host, for correctness checks outside the timed loop.
    """

    call: Callable[[], object]
    outputs: Callable[[], list[np.ndarray]]
    fingerprint: Fingerprint
    synchronize: Callable[[], None] | None = None
    clock: BlockClock | None = None

    def __call__(self) -> object:
        return self.call()

    def time(self, **opts: Any) -> Timing:
        """Measure with :func:`depthfx.backends.timing.measure` (``opts`` are passed on)."""
        from depthfx.backends.timing import measure

        return measure(self, **opts)


#: Fingerprint keys that describe the moment, not the setting; never compared.
VOLATILE_KEYS: frozenset[str] = frozenset({"gpu_clocks_mhz", "created"})


class Fingerprint(Mapping[str, Any]):
    """Where and how a latency was measured: a read-only, JSON-able mapping.

    Documented keys: ``backend``, ``device`` (cpu/cuda), ``device_name``, ``cpu_model``,
    ``driver``, ``cuda``, ``cudnn`` (None without a GPU), ``python``, ``torch``, ``onnx``,
    ``onnxruntime``, ``tensorrt``, ``torch_tensorrt`` (None when not installed), ``threads``,
    ``precision``, ``batch``, ``input_shape``, ``ort_options`` and ``providers`` (None outside
    ONNX Runtime); backends may add more (e.g. ``compile``, ``trt_options``).
    """

    def __init__(self, data: Mapping[str, Any] | None = None, **more: Any) -> None:
        merged = {**(data or {}), **more}
        # Round-trip through JSON so tuples become lists and equality matches a reloaded file.
        self._data: dict[str, Any] = json.loads(json.dumps(merged, sort_keys=True))

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"Fingerprint({self._data!r})"

    def to_json(self) -> str:
        return json.dumps(self._data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Fingerprint:
        return cls(json.loads(text))

    def diff(self, other: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
        """Keys whose values differ (a key missing on one side reads as None)."""
        theirs = Fingerprint(other)
        keys = (set(self) | set(theirs)) - VOLATILE_KEYS
        return {
            k: (self.get(k), theirs.get(k)) for k in sorted(keys) if self.get(k) != theirs.get(k)
        }

    def check_compatible(self, other: Mapping[str, Any], force: bool = False) -> None:
        """Raise :class:`FingerprintMismatch` naming every differing key, unless ``force``."""
        differing = self.diff(other)
        if differing and not force:
            detail = "; ".join(f"{k}: {a!r} != {b!r}" for k, (a, b) in differing.items())
            raise FingerprintMismatch(
                f"measurements come from different settings ({detail}); "
                "re-measure, or pass force=True to mix them anyway"
            )

    def summary(self) -> str:
        """One line for tables and logs."""
        device = self.get("device_name") or self.get("cpu_model") or self.get("device")
        parts = [
            f"{self.get('backend')}/{self.get('device')}",
            str(device),
            f"threads={self.get('threads')}",
            f"precision={self.get('precision')}",
            f"input={self.get('input_shape')}",
        ]
        if self.get("providers"):
            parts.append("providers=" + ",".join(self["providers"]))
        return " | ".join(parts)


def _version(*dists: str) -> str | None:
    from importlib import metadata  # ~30 ms; only when fingerprinting

    for dist in dists:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _nvidia_smi(field: str) -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else None


@functools.cache
def _machine(device: str, device_id: int) -> dict[str, Any]:
    """Machine and library facts, once per process (nvidia-smi costs tens of ms, and a
    latency table fingerprints hundreds of entries); GPU clocks are those at first use."""
    import torch

    on_gpu = device == "cuda" and torch.cuda.is_available()
    trt = sys.modules.get("tensorrt")
    return {
        "device_name": torch.cuda.get_device_name(device_id) if on_gpu else None,
        "cpu_model": _cpu_model(),
        "driver": _nvidia_smi("driver_version") if on_gpu else None,
        "gpu_clocks_mhz": _nvidia_smi("clocks.sm") if on_gpu else None,
        "cuda": torch.version.cuda if on_gpu else None,
        "cudnn": torch.backends.cudnn.version() if on_gpu else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnx": _version("onnx"),
        "onnxruntime": _version("onnxruntime", "onnxruntime-gpu"),
        "tensorrt": getattr(trt, "__version__", None)
        or _version("tensorrt", "tensorrt-cu13", "tensorrt-cu12"),
        "torch_tensorrt": _version("torch-tensorrt", "torch_tensorrt"),
    }


def collect_fingerprint(
    backend: str,
    device: str,
    *,
    threads: int | None,
    precision: str,
    input_shapes: Sequence[Sequence[int]],
    providers: Sequence[str] | None = None,
    ort_options: Mapping[str, Any] | None = None,
    device_id: int = 0,
    **extra: Any,
) -> Fingerprint:
    """Fingerprint of this process's machine and the given settings.

    Versions come from package metadata, so nothing heavy is imported just to fingerprint.
    """
    data: dict[str, Any] = {
        "backend": backend,
        "device": device,
        **_machine(device, device_id),
        "threads": threads,
        "precision": precision,
        "batch": input_shapes[0][0] if input_shapes and input_shapes[0] else None,
        "input_shape": [list(s) for s in input_shapes],
        "providers": list(providers) if providers is not None else None,
        "ort_options": dict(ort_options) if ort_options is not None else None,
        **extra,
    }
    return Fingerprint(data)


def check_device(device: str) -> str:
    """Validate a device name early, with the choices in the message."""
    if device not in ("cpu", "cuda"):
        raise DepthFXError(f"device must be 'cpu' or 'cuda', not {device!r}")
    return device
