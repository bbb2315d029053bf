"""torch.compile with the depthfx backend: apply a (fine-tuned) plan inside torch.compile.

    python examples/torch_compile.py            # CPU, random weights, < 1 min

Plan → prepare (fine-tune here) → torch.compile(prepared, backend="depthfx", options=...):
the backend merges the plan's groups in dynamo's captured graph, checks the result against the
captured graph, and hands it to the delegate backend ("inductor" here; "eager" for a quick run).
The outputs equal depthfx.convert(prepared, plan).
"""

from __future__ import annotations

import torch
import torchvision

from depthfx.passes.analyze import analyze
from depthfx.passes.convert import convert, count_convs
from depthfx.passes.prepare import prepare
from depthfx.testing import random_plan


def main() -> None:
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(weights=None).eval()
    x = torch.randn(1, 3, 64, 64)
    plan = random_plan(analyze(model, (x,)), seed=0)  # normally depthfx.plan(...) from tables
    prepared = prepare(model, plan, (x,))
    # ... fine-tune `prepared` here (it is an ordinary trainable module) ...
    prepared.eval()

    compiled = torch.compile(
        prepared, backend="depthfx", options={"plan": plan, "backend": "inductor"}
    )
    with torch.no_grad():  # the backend is inference-only
        got = compiled(x)
        want = convert(prepared, plan, (x,))(x)
    err = (got - want).abs().max().item()
    print(f"convs: {count_convs(prepared)} -> {count_convs(convert(prepared, plan, (x,)))}")
    print(f"max |torch.compile(depthfx) - convert| = {err:.3g}")


if __name__ == "__main__":
    main()
