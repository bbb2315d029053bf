"""A tiny CNN with padded 3×3 convs, a linear position, a residual and two chains, trained on
scikit-learn digits (8×8) in about a second, its proxy tables and a toy latency table; shared
by the importance tests."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import depthfx
from depthfx.measure.importance import entry_plan, measure_importance
from depthfx.passes.analyze import analyze
from depthfx.passes.prepare import prepare
from depthfx.records import Analysis
from depthfx.solver import ImportanceTable, LatencyTable

X1 = torch.zeros(1, 1, 8, 8)


class Tiny(nn.Module):
    """Chain 0: conv1-bn-relu, conv2-bn (linear), conv3-bn + residual from 1 -> relu, conv4;
    a max-pool; chain 1: conv5-bn-relu; then a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.b1 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.b2 = nn.BatchNorm2d(8)
        self.c3 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.b3 = nn.BatchNorm2d(8)
        self.c4 = nn.Conv2d(8, 12, 1)
        self.pool = nn.MaxPool2d(2)
        self.c5 = nn.Conv2d(12, 16, 3, padding=1, bias=False)
        self.b5 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.b1(self.c1(x)))
        y = self.b2(self.c2(x))
        x = torch.relu(x + self.b3(self.c3(y)))
        x = torch.relu(self.c4(x))
        x = torch.relu(self.b5(self.c5(self.pool(x))))
        return self.fc(x.mean((2, 3)))


@functools.cache
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    sklearn = pytest.importorskip("sklearn.datasets")
    d = sklearn.load_digits()
    return torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0, torch.tensor(d.target)


def trained_tiny(steps: int = 80) -> Tiny:
    torch.manual_seed(0)
    model = Tiny()
    x, y = digits()
    x, y = x[:1400], y[:1400]
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (64,), generator=gen)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@functools.cache
def tiny_tables(estimate: str = "exact") -> tuple[Tiny, Analysis, ImportanceTable]:
    """The trained Tiny, its analysis and its KL proxy table on 128 held-out digits."""
    model = trained_tiny()
    analysis = analyze(model, X1, training=False)
    x, y = digits()
    data = list(zip(x[1400:1528].split(32), y[1400:1528].split(32), strict=True))
    table = measure_importance(
        model, X1, data, analysis=analysis, score="kl", estimate=estimate, progress=False
    )
    return model, analysis, table


def new_acts(analysis: Analysis, key: tuple[int, ...]) -> set[int]:
    """Spec §3.2: new_A = (default minus the block's interior) plus the flagged ends."""
    _, st, end, sa, ea = key
    acts = set(analysis.chains[key[0]].default_acts)
    new = {p for p in acts if not st < p < end} | ({st} if sa else set()) | ({end} if ea else set())
    return new - {0}


def unchanged(analysis: Analysis, key: tuple[int, ...]) -> bool:
    return new_acts(analysis, key) == set(analysis.chains[key[0]].default_acts)


def toy_latency(analysis: Analysis, cheap: set[tuple[int, int, int]] = frozenset()) -> LatencyTable:
    """Merging costs (j − i)² (so DP1 splits), except ``cheap`` blocks, which cost 0.5."""
    times = {
        (c.index, i, j): 0.5 if (c.index, i, j) in cheap else float((j - i) ** 2)
        for c in analysis.chains
        for i, j in c.valid_blocks()
    }
    return LatencyTable(times, dict.fromkeys(times, 0.0))


def recalibrated_scores_hold(
    table: ImportanceTable,
    model: nn.Module,
    example: torch.Tensor,
    analysis: Analysis,
    merges: object,
    batches: list[torch.Tensor],
    x: torch.Tensor,
) -> list[tuple[int, ...]]:
    """Assert every nonzero score of a BN-re-estimated table is −KL(whole network re-estimated
    alone on ``batches``, entry network re-estimated alone) on ``x``; return those keys."""

    def recalibrated(key: tuple[int, ...] | None) -> nn.Module:
        net = prepare(copy.deepcopy(model), entry_plan(analysis, key, merges), (example,))
        return depthfx.recalibrate_bn(net, iter(batches)).eval()

    with torch.no_grad():
        ref = F.log_softmax(recalibrated(None)(x), 1)
        changed = [k for k, v in table.scores.items() if v != 0]
        for key in changed:
            kl = float((ref.exp() * (ref - F.log_softmax(recalibrated(key)(x), 1))).sum(1).mean())
            assert table.scores[key] == pytest.approx(-kl, rel=1e-4, abs=1e-9), key
    return changed
