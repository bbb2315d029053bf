"""build_network: each entry's network is exactly the prepared network."""

from __future__ import annotations

import pytest
import torch
from importance_helpers import X1, digits, tiny_tables

from depthfx.measure.importance import build_network, entries_of, entry_plan
from depthfx.passes.prepare import prepare

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_entry_network_is_the_prepared_network() -> None:
    model, analysis, _ = tiny_tables()
    x = digits()[0][:16]
    for key in entries_of(analysis):
        plan = entry_plan(analysis, key)
        with torch.no_grad():
            want = prepare(model, plan, (X1,)).eval()(x)
            got = build_network(analysis, plan)(x)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    # padding moved: merging convs 1..3 pads the group input by 3 and the convs by 0
    net = build_network(analysis, entry_plan(analysis, (0, 0, 3, 1, 1)))
    assert [net.get_submodule(n).padding for n in ("c1", "c2", "c3")] == [(0, 0)] * 3
