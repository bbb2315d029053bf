"""ONNX Runtime backend: CPU EP by default, CUDA EP or TensorRT EP on request.

Every session setting that changes latency is fixed explicitly and recorded in the
fingerprint: ``ORT_ENABLE_ALL`` (baselines must be backend-optimised), sequential execution,
``threads`` intra-op threads (default 1, the only setting that is stable on a shared CPU),
one inter-op thread and a fixed spinning policy: *no* spinning by default, because with
several intra-op threads on a shared CPU a spinning worker that loses its core stalls every
parallel region (measured on 2 busy cores, MobileNetV2 224×224, 2 threads: spinning 20–46 ms at
batch 1 and 130–180 ms at batch 8 in its slow state, against 10 ms / 50–100 ms without; on an
idle machine the two are within ~15%), so tables and baselines would flip between speed
states. ``spinning=True`` is there for dedicated machines; it is in the fingerprint, so tables
of the two policies never mix. With one thread on CPU, runs are timed by the thread's CPU time
(``clock="auto"``, :mod:`depthfx.backends.timing`), so other processes on the machine do not
inflate them; ``clock="wall"`` times the wall clock (the clock is in the fingerprint too).
Providers are always explicit and verified after session creation, because ORT silently falls
back to CPU when an EP fails to load. On
GPU the inputs live on the device (OrtValue + IO binding) and the outputs are bound to
pre-allocated device buffers, so a timed run includes no host↔device copies.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from depthfx.backends.base import Runnable, check_device, collect_fingerprint, register_backend
from depthfx.backends.timing import clock_name, cpu_block_clock
from depthfx.errors import DepthFXError

#: The execution providers each ``provider`` choice asks for, in priority order.
PROVIDERS: dict[str, list[str]] = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}

_NP_TYPES: dict[str, Any] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}


def _model_bytes(model: Any, example_inputs: Sequence[Any] | None, dynamic_batch: bool) -> bytes:
    """Serialized ONNX from a path, a ModelProto, or a module exported via depthfx.export."""
    if isinstance(model, onnx.ModelProto):
        return model.SerializeToString()
    if isinstance(model, str | os.PathLike):
        path = Path(model)
        if not path.is_file():
            raise DepthFXError(f"ONNX file not found: {path}")
        return path.read_bytes()
    import torch

    if isinstance(model, torch.nn.Module):
        if example_inputs is None:
            raise DepthFXError("example_inputs are required to export an nn.Module to ONNX")
        from depthfx.export import to_onnx_model

        return to_onnx_model(model, example_inputs, dynamic_batch=dynamic_batch).SerializeToString()
    raise DepthFXError(f"cannot run a {type(model).__name__} on ONNX Runtime")


def _feeds(
    sess: ort.InferenceSession, example_inputs: Sequence[Any] | None, batch: int, seed: int
) -> dict[str, np.ndarray]:
    """Host inputs: the example inputs, or seeded random data in the graph's input shapes
    (a symbolic first dimension becomes ``batch``; other symbolic dims need examples)."""
    metas = sess.get_inputs()
    if example_inputs is not None:
        arrays = [
            x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
            for x in example_inputs
        ]
        if len(arrays) != len(metas):
            raise DepthFXError(f"model has {len(metas)} inputs, {len(arrays)} examples given")
        return {m.name: a for m, a in zip(metas, arrays, strict=True)}
    rng = np.random.default_rng(seed)
    feeds = {}
    for m in metas:
        shape = [d if isinstance(d, int) else None for d in m.shape]
        if shape and shape[0] is None:
            shape[0] = batch
        if any(d is None for d in shape):
            raise DepthFXError(f"input {m.name!r} has symbolic dims {m.shape}; pass example_inputs")
        dtype = _NP_TYPES.get(m.type)
        if dtype is None:
            raise DepthFXError(f"input {m.name!r} has unsupported type {m.type}")
        feeds[m.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


@register_backend("onnxruntime")
class OnnxRuntimeBackend:
    """ONNX Runtime sessions with fixed, recorded settings.

    ``provider`` defaults to the device's EP (``cpu`` → CPU EP, ``cuda`` → CUDA EP); pass
    ``provider="tensorrt"`` for the TensorRT EP (``precision="fp16"`` enables its FP16 mode).
    """

    name = "onnxruntime"

    def __init__(
        self,
        device: str = "cpu",
        *,
        threads: int = 1,
        provider: str | None = None,
        spinning: bool = False,
        precision: str = "fp32",
        batch: int = 1,
        device_id: int = 0,
        dynamic_batch: bool = True,
        cache_dir: str | os.PathLike[str] | None = None,
        seed: int = 0,
        clock: str = "auto",
    ) -> None:
        self.device = check_device(device)
        self.provider = provider or device
        if self.provider not in PROVIDERS:
            raise DepthFXError(f"provider must be one of {sorted(PROVIDERS)}, not {provider!r}")
        if (self.provider == "cpu") != (device == "cpu"):
            raise DepthFXError(f"provider {self.provider!r} does not run on device {device!r}")
        if precision != "fp32" and self.provider != "tensorrt":
            raise DepthFXError(
                "ONNX Runtime runs the model's own dtypes; export an fp16 model instead of "
                f"asking for precision={precision!r} (only the TensorRT EP can down-cast)"
            )
        if threads < 1:
            raise DepthFXError(f"threads must be >= 1, got {threads}")
        self.threads = threads
        self.spinning = spinning
        self.precision = precision
        self.batch = batch
        self.device_id = device_id
        self.dynamic_batch = dynamic_batch
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.seed = seed
        cpu_block_clock(clock, threads, self.device)  # validates early
        self.clock = clock

    def session_options(self) -> ort.SessionOptions:
        """Every latency-relevant option set explicitly (see :meth:`ort_options`)."""
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        spin = "1" if self.spinning else "0"
        opts.add_session_config_entry("session.intra_op.allow_spinning", spin)
        opts.add_session_config_entry("session.inter_op.allow_spinning", spin)
        opts.log_severity_level = 3
        return opts

    def ort_options(self) -> dict[str, Any]:
        return {
            "graph_optimization_level": "ORT_ENABLE_ALL",
            "execution_mode": "ORT_SEQUENTIAL",
            "intra_op_num_threads": self.threads,
            "inter_op_num_threads": 1,
            "allow_spinning": self.spinning,
            "io_binding": self.device == "cuda",
            "provider_options": self._provider_options(),
        }

    def _provider_options(self) -> list[dict[str, Any]]:
        cuda = {
            "device_id": self.device_id,
            "cudnn_conv_algo_search": "EXHAUSTIVE",
            "do_copy_in_default_stream": True,
        }
        if self.provider == "cpu":
            return [{}]
        if self.provider == "cuda":
            return [cuda, {}]
        trt: dict[str, Any] = {
            "device_id": self.device_id,
            "trt_fp16_enable": self.precision == "fp16",
        }
        if self.cache_dir is not None:
            trt |= {
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(self.cache_dir),
                "trt_timing_cache_enable": True,
                "trt_timing_cache_path": str(self.cache_dir),
            }
        return [trt, cuda, {}]

    def session(self, model_bytes: bytes) -> ort.InferenceSession:
        """A session on exactly the requested EP; raises instead of falling back to CPU."""
        wanted = PROVIDERS[self.provider]
        available = ort.get_available_providers()
        if wanted[0] not in available:
            raise DepthFXError(
                f"{wanted[0]} is not available in this onnxruntime build "
                f"(available: {', '.join(available)}); install onnxruntime-gpu (and not "
                "onnxruntime alongside it) for CUDA/TensorRT"
            )
        if self.cache_dir is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        try:
            sess = ort.InferenceSession(
                model_bytes,
                self.session_options(),
                providers=wanted,
                provider_options=self._provider_options(),
            )
        except Exception as err:  # ORT raises its own exception types (Fail, InvalidGraph…)
            raise DepthFXError(f"ONNX Runtime could not load the model: {err}") from err
        if sess.get_providers()[0] != wanted[0]:
            raise DepthFXError(
                f"ONNX Runtime fell back to {sess.get_providers()} although {wanted[0]} was "
                "requested (the EP failed to load: check CUDA/cuDNN/TensorRT libraries)"
            )
        return sess

    def prepare(self, model: Any, example_inputs: Sequence[Any] | None = None) -> Runnable:
        sess = self.session(_model_bytes(model, example_inputs, self.dynamic_batch))
        feeds = _feeds(sess, example_inputs, self.batch, self.seed)
        block_clock = cpu_block_clock(self.clock, self.threads, self.device)
        fingerprint = collect_fingerprint(
            "onnxruntime",
            self.device,
            threads=self.threads,
            precision=self.precision,
            input_shapes=[a.shape for a in feeds.values()],
            providers=sess.get_providers(),
            ort_options=self.ort_options(),
            device_id=self.device_id,
            clock=clock_name(block_clock),
        )
        if self.device == "cpu":
            return Runnable(
                call=lambda: sess.run(None, feeds),
                outputs=lambda: list(sess.run(None, feeds)),
                fingerprint=fingerprint,
                clock=block_clock,
            )
        return self._bound(sess, feeds, fingerprint)

    def _bound(
        self, sess: ort.InferenceSession, feeds: dict[str, np.ndarray], fingerprint: Any
    ) -> Runnable:
        bound = _BoundRun(sess, feeds, self.device_id)
        return Runnable(
            call=bound,
            outputs=bound.fetch,
            fingerprint=fingerprint,
            synchronize=bound.binding.synchronize_outputs,
        )


class _BoundRun:
    """GPU run with device-resident inputs and outputs bound to buffers from a first run;
    holds the OrtValues so they live as long as the binding that points at them."""

    def __init__(
        self, sess: ort.InferenceSession, feeds: dict[str, np.ndarray], device_id: int
    ) -> None:
        self.sess = sess
        self.binding = sess.io_binding()
        self.inputs = {
            name: ort.OrtValue.ortvalue_from_numpy(arr, "cuda", device_id)
            for name, arr in feeds.items()
        }
        for name, value in self.inputs.items():
            self.binding.bind_ortvalue_input(name, value)
        names = [o.name for o in sess.get_outputs()]
        for name in names:
            self.binding.bind_output(name, "cuda", device_id)
        sess.run_with_iobinding(self.binding)
        self.outputs = self.binding.get_outputs()
        self.binding.clear_binding_outputs()
        for name, value in zip(names, self.outputs, strict=True):
            self.binding.bind_ortvalue_output(name, value)

    def __call__(self) -> None:
        self.sess.run_with_iobinding(self.binding)

    def fetch(self) -> list[np.ndarray]:
        self.sess.run_with_iobinding(self.binding)
        return list(self.binding.copy_outputs_to_cpu())
