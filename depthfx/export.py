"""ONNX export that checks its own result.

Uses the torch.export-based exporter (``dynamo=True``) with a torch.export ``Dim`` for a
dynamic batch, and its default onnxscript optimisation (which folds BatchNorm into Conv,
pads into convs, Relu/Clip chains), so an exported baseline is already what a deployment
would run. :func:`export_onnx` validates the model with the full ONNX checker and compares
ONNX Runtime (CPU) against the torch module on the example inputs, and on another batch size
when the batch is dynamic, before the file appears: a mismatch raises and leaves no file.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from depthfx.errors import DepthFXError
from depthfx.io import atomic_path

if TYPE_CHECKING:
    import onnx
    import torch

#: The opset every depthfx export uses (torch 2.14's exporter default); the tiny conv-block
#: graphs of :mod:`depthfx.backends.onnx_blocks` use the same one so tables match exports.
DEFAULT_OPSET = 20
#: IR version the exporter writes at opset 20; ONNX Runtime 1.3x loads it.
IR_VERSION = 10


@contextlib.contextmanager
def _eval_mode(module: torch.nn.Module) -> Iterator[None]:
    """Export in eval mode (tracing specialises on ``training``), then restore every flag."""
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def _as_tuple(example_inputs: object) -> tuple[torch.Tensor, ...]:
    import torch

    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    return tuple(example_inputs)  # type: ignore[arg-type]


def _summary(err: Exception) -> str:
    """The root cause line of an exporter error (its message is a page of advice)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if "## Exception summary" in lines:
        lines = lines[lines.index("## Exception summary") + 1 :]
    return lines[0] if lines else type(err).__name__


def to_onnx_model(
    module: torch.nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    *,
    dynamic_batch: bool = True,
    opset: int | None = None,
) -> onnx.ModelProto:
    """Export ``module`` (in eval mode) to an in-memory, optimised ``onnx.ModelProto``.

    No checks beyond the exporter's own; use :func:`export_onnx` for a verified file.
    """
    import torch

    inputs = _as_tuple(example_inputs)
    dynamic_shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch", min=1, max=1 << 16)
        dynamic_shapes = tuple({0: batch} if x.dim() > 0 else None for x in inputs)
    try:
        with (
            _eval_mode(module),
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module,
                inputs,
                dynamo=True,
                dynamic_shapes=dynamic_shapes,
                opset_version=opset or DEFAULT_OPSET,
                optimize=True,
                verbose=False,
            )
    except Exception as err:  # the exporter raises many unrelated types
        raise DepthFXError(
            f"torch.onnx.export failed for {type(module).__name__}: {_summary(err)}"
        ) from err
    if program is None:
        raise DepthFXError("torch.onnx.export returned no program")
    return program.model_proto


def _reference(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
    import torch

    with _eval_mode(module), torch.inference_mode():
        out = module(*inputs)
    leaves = torch.utils._pytree.tree_leaves(out)
    return [t.detach().cpu().float().numpy() for t in leaves if isinstance(t, torch.Tensor)]


def _other_batch(inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The example inputs with one more sample, to check a dynamic batch really is dynamic."""
    import torch

    def grow(x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 0:
            return x
        extra = torch.randn_like(x[:1]) if x.is_floating_point() else x[:1]
        return torch.cat([x, extra])

    return tuple(grow(x) for x in inputs)


def verify_onnx(
    path: str | os.PathLike[str],
    module: torch.nn.Module,
    inputs: tuple[torch.Tensor, ...],
    *,
    rtol: float,
    atol: float,
) -> float:
    """Run ONNX Runtime CPU on ``inputs``; raise if it differs from ``module``. Returns the
    max abs error."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    if len(names) != len(inputs):
        raise DepthFXError(f"ONNX model has {len(names)} inputs, example has {len(inputs)}")
    feeds = {n: x.detach().cpu().numpy() for n, x in zip(names, inputs, strict=True)}
    got = sess.run(None, feeds)
    want = _reference(module, inputs)
    if len(got) != len(want):
        raise DepthFXError(f"ONNX model has {len(got)} outputs, torch module has {len(want)}")
    worst = 0.0
    for k, (g, w) in enumerate(zip(got, want, strict=True)):
        if g.shape != w.shape:
            raise DepthFXError(f"output {k}: ONNX shape {g.shape} != torch shape {w.shape}")
        err = float(np.max(np.abs(g.astype(np.float64) - w))) if g.size else 0.0
        worst = max(worst, err)
        if not np.allclose(g, w, rtol=rtol, atol=atol):
            batch = inputs[0].shape[0] if inputs and inputs[0].dim() else None
            raise DepthFXError(
                f"ONNX Runtime output {k} differs from torch at batch {batch}: "
                f"max abs error {err:.3g} (rtol={rtol:g}, atol={atol:g})"
            )
    return worst


def export_onnx(
    module: torch.nn.Module,
    path: str | os.PathLike[str],
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    *,
    dynamic_batch: bool = True,
    opset: int | None = None,
    check: bool = True,
    rtol: float = 1e-4,
    atol: float = 1e-4,
) -> Path:
    """Export ``module`` to ``path``; with ``check``, run the full ONNX checker and compare
    ONNX Runtime CPU with torch (also at batch+1 when dynamic) before the file appears.

    The file is written to a temporary name beside ``path`` and renamed only after every
    check passed, so an error never leaves a partial or unverified file.
    """
    import onnx

    path = Path(path)
    inputs = _as_tuple(example_inputs)
    proto = to_onnx_model(module, inputs, dynamic_batch=dynamic_batch, opset=opset)
    with atomic_path(path) as tmp:
        onnx.save_model(proto, tmp)
        if check:
            try:
                onnx.checker.check_model(str(tmp), full_check=True)
            except onnx.checker.ValidationError as err:
                raise DepthFXError(f"exported ONNX model is invalid: {err}") from err
            verify_onnx(tmp, module, inputs, rtol=rtol, atol=atol)
            if dynamic_batch:
                verify_onnx(tmp, module, _other_batch(inputs), rtol=rtol, atol=atol)
    return path
