"""One way to check a rewrite: run the reference and the rewritten module on the same inputs.

``compare_outputs`` is what ``convert``, ``compile`` and the dynamo backend use to prove a
merged network equal to the one it replaced; ``group_mismatch`` narrows a failure down to the
first merge group whose merged conv does not reproduce its prepared convs. Criterion and
tolerances: :func:`depthfx.algebra.check_close`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn
from torch.utils._pytree import tree_leaves

from depthfx.algebra import check_close
from depthfx.errors import MergeMismatch
from depthfx.passes.group_record import PREPARED_ATTR, PreparedInfo


@dataclass(frozen=True)
class OutputErrors:
    """Largest errors over all tensor outputs: max |Δ| and max |Δ| / max |reference|."""

    max_abs: float
    max_rel: float


def compare_outputs(
    reference: nn.Module,
    candidate: nn.Module,
    example_inputs: Sequence[Any],
    *,
    rtol: float = 1e-4,
    atol: float = 1e-5,
    what: str = "network output",
    check: bool = True,
) -> OutputErrors:
    """Run both modules in eval mode without gradients (outside any fake-tensor mode, so it
    also works inside a dynamo backend) and return the largest errors over the tensor
    outputs; with ``check``, raise MergeMismatch naming the first output beyond tolerance.
    The reference's train/eval mode is restored afterwards."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    was_training = reference.training
    reference.eval()
    try:
        with torch.no_grad(), unset_fake_temporarily():
            expected = tree_leaves(reference(*example_inputs))
            actual = tree_leaves(candidate(*example_inputs))
    finally:
        reference.train(was_training)
    max_abs = max_rel = 0.0
    for k, (want, got) in enumerate(zip(expected, actual, strict=True)):
        if not isinstance(want, torch.Tensor):
            continue
        if check:
            check_close(want, got, group=f"{what} {k}", rtol=rtol, atol=atol)
        err = (want.detach().double() - got.detach().double()).abs().max().item()
        scale = want.detach().double().abs().max().item()
        max_abs, max_rel = max(max_abs, err), max(max_rel, err / scale if scale else err)
    return OutputErrors(max_abs, max_rel)


def group_mismatch(
    prepared: fx.GraphModule,
    merged: fx.GraphModule,
    inputs: Sequence[torch.Tensor],
    *,
    rtol: float = 1e-4,
    atol: float = 1e-5,
) -> MergeMismatch | None:
    """The mismatch of the first group whose merged modules, fed the prepared network's own
    group input (eval mode), do not reproduce its group output; None if every group does.

    Checks each merged conv on its own, before any activation that could hide an error by
    saturating.
    """
    info: PreparedInfo = getattr(prepared, PREPARED_ATTR)
    values: dict[str, torch.Tensor] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, n: fx.Node) -> object:
            out = super().run_node(n)
            if isinstance(out, torch.Tensor):
                values[n.name] = out.clone()  # a later in-place activation would overwrite it
            return out

    was_training = prepared.training
    prepared.eval()
    try:
        with torch.no_grad():
            Recorder(prepared).run(*inputs)
            for record in info.groups:
                prefix = record.name
                if not hasattr(merged, f"{prefix}_conv"):
                    continue
                x = values[record.input]
                if hasattr(merged, f"{prefix}_pad"):
                    x = getattr(merged, f"{prefix}_pad")(x)
                got = getattr(merged, f"{prefix}_conv")(x)
                try:
                    check_close(
                        values[record.output], got, group=record.describe(), rtol=rtol, atol=atol
                    )
                except MergeMismatch as err:
                    return err
    finally:
        prepared.train(was_training)
    return None


__all__ = ["OutputErrors", "compare_outputs", "group_mismatch"]
