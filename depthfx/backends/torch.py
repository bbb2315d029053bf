"""PyTorch backend: eager or ``torch.compile`` (inductor), on CPU or CUDA.

Runs under ``torch.inference_mode`` on a private eval-mode copy of the model (the caller's
module is never moved, cast or switched to eval). On CUDA, blocks are timed with CUDA events
on the current stream; compilation happens in :meth:`TorchBackend.prepare`, never inside the
timed warm-up. CPU thread count is process-global in torch: ``threads`` sets it and the
fingerprint records it. On one CPU thread blocks are timed by the thread's CPU time
(``clock="auto"``, see :mod:`depthfx.backends.timing`); ``clock="wall"`` times the wall clock.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from depthfx.backends.base import Runnable, check_device, collect_fingerprint, register_backend
from depthfx.backends.timing import CudaEventClock, clock_name, cpu_block_clock
from depthfx.errors import DepthFXError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _host(out: object) -> list[np.ndarray]:
    leaves = torch.utils._pytree.tree_leaves(out)
    return [t.detach().float().cpu().numpy() for t in leaves if isinstance(t, torch.Tensor)]


@register_backend("torch")
class TorchBackend:
    """Eager (``compile=False``) or inductor-compiled (``compile=True``) PyTorch."""

    name = "torch"

    def __init__(
        self,
        device: str = "cpu",
        *,
        compile: bool = False,
        mode: str | None = None,
        threads: int | None = 1,
        precision: str = "fp32",
        device_id: int = 0,
        clock: str = "auto",
    ) -> None:
        self.device = check_device(device)
        cpu_block_clock(clock, threads or 1, device)  # validates early; threads=None: later
        self.clock = clock
        if device == "cuda" and not torch.cuda.is_available():
            raise DepthFXError("device='cuda' requested but torch sees no CUDA GPU")
        if precision not in DTYPES:
            raise DepthFXError(f"precision must be one of {sorted(DTYPES)}, not {precision!r}")
        self.compile = compile
        self.mode = mode
        self.threads = threads
        self.precision = precision
        self.device_id = device_id

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device, self.device_id if self.device == "cuda" else None)

    def prepare(self, model: Any, example_inputs: Sequence[torch.Tensor] | None = None) -> Runnable:
        if not isinstance(model, torch.nn.Module):
            raise DepthFXError(f"the torch backend runs nn.Modules, not {type(model).__name__}")
        if example_inputs is None:
            raise DepthFXError("the torch backend needs example_inputs")
        if self.threads is not None and self.device == "cpu":
            torch.set_num_threads(self.threads)
        dtype = DTYPES[self.precision]
        dev = self.torch_device
        net = copy.deepcopy(model).eval().to(dev, dtype)
        inputs = tuple(
            x.to(dev, dtype) if x.is_floating_point() else x.to(dev) for x in example_inputs
        )
        fn = (
            torch.compile(net, backend="inductor", mode=self.mode, dynamic=False)
            if self.compile
            else net
        )

        def call() -> object:
            with torch.inference_mode():
                return fn(*inputs)

        call()  # compiles (torch.compile) and initialises kernels outside the timed region
        cuda = self.device == "cuda"
        clock = CudaEventClock() if cuda else cpu_block_clock(self.clock, torch.get_num_threads())
        return Runnable(
            call=call,
            outputs=lambda: _host(call()),
            fingerprint=collect_fingerprint(
                "torch",
                self.device,
                threads=torch.get_num_threads() if not cuda else None,
                precision=self.precision,
                input_shapes=[list(x.shape) for x in inputs],
                device_id=self.device_id,
                compile="inductor" if self.compile else "eager",
                compile_mode=self.mode,
                clock=clock_name(clock),
            ),
            synchronize=(lambda: torch.cuda.synchronize(dev)) if cuda else None,
            clock=clock,
        )
