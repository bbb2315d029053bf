"""compare_outputs and group_mismatch: the one output check of convert, compile and dynamo."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from depthfx.errors import MergeMismatch
from depthfx.passes.convert import convert
from depthfx.passes.prepare import prepare
from depthfx.passes.verify import OutputErrors, compare_outputs, group_mismatch
from depthfx.testing import TinyResidual, randomize_bn, single_chain_plan


def test_compare_outputs_measures_checks_and_restores_the_mode() -> None:
    torch.manual_seed(0)
    reference, x = nn.Conv2d(3, 4, 3).train(), torch.randn(2, 3, 8, 8)
    candidate = copy.deepcopy(reference)
    assert compare_outputs(reference, candidate, (x,)) == OutputErrors(0.0, 0.0)
    assert reference.training
    with torch.no_grad():
        candidate.bias += 1e-2
    errors = compare_outputs(reference, candidate, (x,), check=False)
    with torch.no_grad():
        scale = reference(x).abs().max().item()
    assert errors.max_abs == pytest.approx(1e-2, rel=1e-3)
    assert errors.max_rel == pytest.approx(errors.max_abs / scale)
    with pytest.raises(MergeMismatch, match="network output 0"):
        compare_outputs(reference, candidate, (x,))


def test_group_mismatch_names_the_first_broken_group() -> None:
    torch.manual_seed(0)
    model, x = randomize_bn(TinyResidual()).eval(), torch.randn(2, 3, 12, 12)
    plan = single_chain_plan(model, x, {1, 3}, {1, 3})
    prepared = prepare(model, plan, (x,))
    merged = convert(prepared, plan, (x,))
    assert group_mismatch(prepared, merged, (x,)) is None
    assert prepared.training  # restored
    with torch.no_grad():
        merged.get_submodule("depthfx_merged_0_1_3_conv").weight[0, 0, 0, 0] += 1.0
    err = group_mismatch(prepared, merged, (x,))
    assert isinstance(err, MergeMismatch)
    assert "group 1->3 of chain 0" in str(err)
