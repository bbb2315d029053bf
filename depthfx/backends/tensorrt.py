"""TensorRT backend: torch-tensorrt's dynamo path, or a plain TensorRT engine from ONNX.

* ``path="torch_tensorrt"`` (default for modules): ``torch.export`` then
  ``torch_tensorrt.dynamo.compile``. Networks are strongly typed in torch-tensorrt 2.14 /
  TensorRT 11 and ``enabled_precisions`` is ignored on this path, so FP16 means casting the
  model and inputs to half before export.
* ``path="onnx"`` (always used for ONNX inputs): builder + OnnxParser with a timing cache,
  engine cached on disk under a hash of the ONNX bytes and every build setting. FP16 again
  needs an FP16 ONNX graph (a module is exported after ``.half()`` on the GPU).

Blocks are timed with CUDA events on the stream the engine runs on. tensorrt and
torch_tensorrt are imported inside functions only.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from depthfx.backends.base import Runnable, collect_fingerprint, register_backend
from depthfx.backends.timing import CudaEventClock
from depthfx.errors import DepthFXError
from depthfx.io import atomic_write

DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


def _default_cache_dir() -> Path:
    return Path(os.environ.get("DEPTHFX_CACHE", Path.home() / ".cache" / "depthfx")) / "tensorrt"


@register_backend("tensorrt")
class TensorRTBackend:
    """TensorRT engines on one CUDA device; ``cache_dir`` holds engines and timing caches."""

    name = "tensorrt"

    def __init__(
        self,
        device: str = "cuda",
        *,
        precision: str = "fp32",
        path: str = "torch_tensorrt",
        optimization_level: int = 3,
        workspace_bytes: int = 4 << 30,
        cache_dir: str | os.PathLike[str] | None = None,
        device_id: int = 0,
        batch: int = 1,
    ) -> None:
        if device != "cuda":
            raise DepthFXError(f"TensorRT runs on device='cuda' only, not {device!r}")
        if not torch.cuda.is_available():
            raise DepthFXError("TensorRT needs a CUDA GPU, and torch sees none")
        if precision not in DTYPES:
            raise DepthFXError(f"precision must be one of {sorted(DTYPES)}, not {precision!r}")
        if path not in ("torch_tensorrt", "onnx"):
            raise DepthFXError(f"path must be 'torch_tensorrt' or 'onnx', not {path!r}")
        self.device = device
        self.precision = precision
        self.path = path
        self.optimization_level = optimization_level
        self.workspace_bytes = workspace_bytes
        self.cache_dir = Path(cache_dir) if cache_dir is not None else _default_cache_dir()
        self.device_id = device_id
        self.batch = batch

    @property
    def torch_device(self) -> torch.device:
        return torch.device("cuda", self.device_id)

    def _cast(
        self, model: torch.nn.Module, example_inputs: Sequence[torch.Tensor]
    ) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
        dtype, dev = DTYPES[self.precision], self.torch_device
        net = copy.deepcopy(model).eval().to(dev, dtype)
        inputs = tuple(
            x.to(dev, dtype) if x.is_floating_point() else x.to(dev) for x in example_inputs
        )
        return net, inputs

    def prepare(self, model: Any, example_inputs: Sequence[torch.Tensor] | None = None) -> Runnable:
        if isinstance(model, torch.nn.Module):
            if example_inputs is None:
                raise DepthFXError("example_inputs are required to compile an nn.Module")
            if self.path == "torch_tensorrt":
                return self._torch_tensorrt(model, example_inputs)
            net, inputs = self._cast(model, example_inputs)
            from depthfx.export import to_onnx_model

            onnx_bytes = to_onnx_model(net, inputs, dynamic_batch=False).SerializeToString()
            return self._onnx_engine(onnx_bytes, inputs)
        if isinstance(model, str | os.PathLike):
            return self._onnx_engine(Path(model).read_bytes(), example_inputs)
        import onnx

        if isinstance(model, onnx.ModelProto):
            return self._onnx_engine(model.SerializeToString(), example_inputs)
        raise DepthFXError(f"cannot build a TensorRT engine from a {type(model).__name__}")

    def _fingerprint(self, input_shapes: Sequence[Sequence[int]], **extra: Any) -> Any:
        return collect_fingerprint(
            "tensorrt",
            "cuda",
            threads=None,
            precision=self.precision,
            input_shapes=input_shapes,
            device_id=self.device_id,
            trt_options={
                "path": self.path,
                "optimization_level": self.optimization_level,
                "workspace_bytes": self.workspace_bytes,
                **extra,
            },
        )

    def _torch_tensorrt(
        self, model: torch.nn.Module, example_inputs: Sequence[torch.Tensor]
    ) -> Runnable:
        import torch_tensorrt

        net, inputs = self._cast(model, example_inputs)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        exported = torch.export.export(net, inputs)
        trt_module = torch_tensorrt.dynamo.compile(
            exported,
            arg_inputs=list(inputs),
            device=self.torch_device,
            min_block_size=1,
            optimization_level=self.optimization_level,
            workspace_size=self.workspace_bytes,
            cache_built_engines=True,
            reuse_cached_engines=True,
            engine_cache_dir=str(self.cache_dir / "engines"),
            timing_cache_path=str(self.cache_dir / "timing.cache"),
        )

        def call() -> object:
            with torch.inference_mode():
                return trt_module(*inputs)

        call()
        return Runnable(
            call=call,
            outputs=lambda: [
                t.detach().float().cpu().numpy()
                for t in torch.utils._pytree.tree_leaves(call())
                if isinstance(t, torch.Tensor)
            ],
            fingerprint=self._fingerprint([list(x.shape) for x in inputs]),
            synchronize=lambda: torch.cuda.synchronize(self.torch_device),
            clock=CudaEventClock(),
        )

    def _engine_key(self, onnx_bytes: bytes, shapes: dict[str, tuple[int, ...]], trt: Any) -> str:
        settings = {
            "trt": trt.__version__,
            "gpu": torch.cuda.get_device_name(self.device_id),
            "optimization_level": self.optimization_level,
            "workspace": self.workspace_bytes,
            "shapes": {k: list(v) for k, v in sorted(shapes.items())},
        }
        h = hashlib.sha256(onnx_bytes)
        h.update(json.dumps(settings, sort_keys=True).encode())
        return h.hexdigest()[:32]

    def _build(self, onnx_bytes: bytes, shapes: dict[str, tuple[int, ...]], trt: Any) -> bytes:
        """Build (or load from the disk cache) a serialized engine for these input shapes."""
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        engine_path = self.cache_dir / f"{self._engine_key(onnx_bytes, shapes, trt)}.engine"
        if engine_path.is_file():
            return engine_path.read_bytes()
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse(onnx_bytes):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise DepthFXError(f"TensorRT could not parse the ONNX model: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.workspace_bytes)
        config.builder_optimization_level = self.optimization_level
        profile = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            shape = shapes[tensor.name]
            profile.set_shape(tensor.name, shape, shape, shape)
        config.add_optimization_profile(profile)
        timing_path = self.cache_dir / "timing.cache"
        cache = config.create_timing_cache(
            timing_path.read_bytes() if timing_path.is_file() else b""
        )
        config.set_timing_cache(cache, ignore_mismatch=False)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise DepthFXError("TensorRT failed to build an engine (see the TensorRT log above)")
        atomic_write(timing_path, bytes(config.get_timing_cache().serialize()))
        data = bytes(plan)
        atomic_write(engine_path, data)
        return data

    def _input_shapes(
        self, onnx_bytes: bytes, example_inputs: Sequence[torch.Tensor] | None
    ) -> dict[str, tuple[int, ...]]:
        """Static input shapes: the examples', or the graph's with a symbolic batch = ``batch``."""
        import onnx

        graph_inputs = list(onnx.load_from_string(onnx_bytes).graph.input)
        half = onnx.TensorProto.FLOAT16
        if self.precision == "fp16" and graph_inputs[0].type.tensor_type.elem_type != half:
            raise DepthFXError(
                "TensorRT 11 is strongly typed: precision='fp16' needs an fp16 ONNX graph "
                "(export from model.half(), or pass the nn.Module)"
            )
        if example_inputs is not None:
            if len(example_inputs) != len(graph_inputs):
                raise DepthFXError(
                    f"model has {len(graph_inputs)} inputs, {len(example_inputs)} examples given"
                )
            return {
                g.name: tuple(x.shape) for g, x in zip(graph_inputs, example_inputs, strict=True)
            }
        shapes = {}
        for g in graph_inputs:
            dims = [
                d.dim_value if d.HasField("dim_value") else None
                for d in g.type.tensor_type.shape.dim
            ]
            if dims and dims[0] is None:
                dims[0] = self.batch
            if any(d is None for d in dims):
                raise DepthFXError(f"input {g.name!r} has symbolic dims; pass example_inputs")
            shapes[g.name] = tuple(d for d in dims if d is not None)
        return shapes

    def _onnx_engine(
        self, onnx_bytes: bytes, example_inputs: Sequence[torch.Tensor] | None
    ) -> Runnable:
        import tensorrt as trt

        shapes = self._input_shapes(onnx_bytes, example_inputs)
        run = _EngineRun(
            trt, self._build(onnx_bytes, shapes, trt), shapes, example_inputs, self.torch_device
        )
        run.fetch()
        return Runnable(
            call=run,
            outputs=run.fetch,
            fingerprint=self._fingerprint(list(shapes.values()), engine_from="onnx"),
            synchronize=run.stream.synchronize,
            clock=CudaEventClock(run.stream),
        )


class _EngineRun:
    """A deserialized engine with device buffers bound once; holds everything the execution
    context points into, so none of it is freed while the runnable lives."""

    def __init__(
        self,
        trt: Any,
        plan: bytes,
        shapes: dict[str, tuple[int, ...]],
        example_inputs: Sequence[torch.Tensor] | None,
        device: torch.device,
    ) -> None:
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise DepthFXError("TensorRT could not deserialize the engine")
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream(device)
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        order = list(shapes)
        gen = torch.Generator(device).manual_seed(0)
        self.buffers: dict[str, torch.Tensor] = {}
        for name in (n for n in names if is_input[n]):
            dtype = _torch_dtype(trt, self.engine.get_tensor_dtype(name))
            self.context.set_input_shape(name, shapes[name])
            if example_inputs is not None:
                src = example_inputs[order.index(name)]
                self.buffers[name] = src.to(device, dtype).contiguous()
            else:
                self.buffers[name] = torch.randn(shapes[name], generator=gen, device=device).to(
                    dtype
                )
        self.outputs = [n for n in names if not is_input[n]]
        for name in self.outputs:
            dtype = _torch_dtype(trt, self.engine.get_tensor_dtype(name))
            shape = tuple(self.context.get_tensor_shape(name))
            self.buffers[name] = torch.empty(shape, dtype=dtype, device=device)
        for name, buf in self.buffers.items():
            self.context.set_tensor_address(name, buf.data_ptr())

    def __call__(self) -> None:
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise DepthFXError("TensorRT execute_async_v3 failed")

    def fetch(self) -> list[np.ndarray]:
        self()
        self.stream.synchronize()
        return [self.buffers[n].float().cpu().numpy() for n in self.outputs]


def _torch_dtype(trt: Any, dtype: Any) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dtype=trt.nptype(dtype))).dtype
