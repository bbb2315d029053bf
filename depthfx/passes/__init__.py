"""Graph passes, in the order a model meets them.

* ``capture`` (trace to an ``fx.GraphModule``), ``find_chains``, ``analyze`` (both: the chains
  of a captured model, as :class:`~depthfx.records.Analysis`);
* ``prepare``: per chain, ``rewrite_chain`` runs ``CHAIN_PASSES`` — ``prune_convs``,
  ``remove_activations``, ``insert_activations``, ``move_padding``, ``align_residuals`` — and
  records the merge groups (:mod:`depthfx.passes.group_record`);
* ``convert``: each recorded group becomes one conv, checked with ``compare_outputs`` /
  ``group_mismatch`` (:mod:`depthfx.passes.verify`);
* ``fold_bn_modules``: fold eval-mode BN into the conv before it, in place (the importance
  proxy's speed-up; the math is :mod:`depthfx.algebra.fold_bn`).
"""

from depthfx.passes.align_residuals import align_residuals, crop_like, shift
from depthfx.passes.analyze import analyze
from depthfx.passes.capture import capture
from depthfx.passes.chain_rewrite import ChainPass, ChainRewrite
from depthfx.passes.convert import convert, count_convs
from depthfx.passes.find_chains import find_chains
from depthfx.passes.fold_bn import fold_bn_modules
from depthfx.passes.group_record import (
    PREPARED_ATTR,
    ConvStep,
    GroupRecord,
    PreparedInfo,
    ResidualStep,
)
from depthfx.passes.insert_activations import insert_activations
from depthfx.passes.move_padding import move_padding
from depthfx.passes.prepare import CHAIN_PASSES, prepare, rewrite_chain
from depthfx.passes.prune_convs import PrunedNormAct, prune_convs
from depthfx.passes.remove_activations import remove_activations
from depthfx.passes.verify import OutputErrors, compare_outputs, group_mismatch

__all__ = [
    "CHAIN_PASSES",
    "PREPARED_ATTR",
    "ChainPass",
    "ChainRewrite",
    "ConvStep",
    "GroupRecord",
    "OutputErrors",
    "PreparedInfo",
    "PrunedNormAct",
    "ResidualStep",
    "align_residuals",
    "analyze",
    "capture",
    "compare_outputs",
    "convert",
    "count_convs",
    "crop_like",
    "find_chains",
    "fold_bn_modules",
    "group_mismatch",
    "insert_activations",
    "move_padding",
    "prepare",
    "prune_convs",
    "remove_activations",
    "rewrite_chain",
    "shift",
]
