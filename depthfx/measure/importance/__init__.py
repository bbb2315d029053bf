"""Importance tables: one score per extended block (chain, st, end, st_act, end_act), spec §3.

Every method scores an entry on "the network with that block merged": the model prepared as the
paper's ``fix_act(new_A)`` (spec §3.2), A = (default \\ {p : st < p < end}) ∪ ({st} if st_act)
∪ ({end} if end_act) and S = A ∪ barriers (closed under the residual rule), every other chain
keeping its original pattern. The reference is the base network, the original pattern prepared
the same way (spec §3.2 step 1; for the usual models it is the original network bit for bit),
so an entry that changes no activation scores exactly 0. (S = A ∪ {st, end} would move paddings
differently from the base even for unchanged entries.)

Methods (``measure_importance(method=...)``; registered with :func:`register_importance_method`):

* ``proxy`` (default, no training; :mod:`.proxy`): eval-mode outputs of each entry's network on
  the proxy's input data (:mod:`.proxy_data`) against the base network's; score
  −KL(softmax(base) ‖ softmax(entry)) for classifiers, −relative MSE otherwise, Δ top-1 in
  percentage points when labels are given (exact estimate only; :mod:`.divergence`). Built from
  ONE eval capture: per entry only the graph is edited (:mod:`.networks`, with ``prepare``'s own
  chain rewrite, so it is exactly the prepared network, padding moves included). Two estimates:
  ``estimate="fisher"`` (default, the Fisher proxy, :mod:`.fisher`) runs only each entry's
  changed region (:mod:`.regions`; all regions as one graph with their common nodes computed
  once, :mod:`.shared_regions`; its running sums checkpointed per batch, :mod:`.checkpoint`) and
  takes the rest of the network to second order from base-network gradients;
  ``estimate="exact"`` (:mod:`.exact`) runs every entry's network to the output, grouped by the
  last merge boundary q <= st: the network up to position q is identical for all of them
  (checked node by node), so it runs once per batch and group, and each entry runs only from q
  onward (:mod:`.prefixes`). ``bn_recalibration=True`` (:mod:`.recalibrated`) re-estimates each
  entry network's BN statistics on the proxy's data first (and the base network's), then runs
  it to the output, sharing the heads the same way.
* ``finetune`` (:mod:`.finetune`): the paper's experiment (spec §3.2): per entry a prepared
  copy, single-layer blocks re-initialised, fine-tuned with :func:`depthfx.finetune` (SGD,
  Nesterov, cosine per iteration), scored by the change in held-out top-1 (percentage points).
  Per-entry results are cached on disk (atomic JSON files, :mod:`.experiments`), so an
  interrupted run resumes; ``shard=(k, n)`` splits the entries across machines.
* ``distill`` (:mod:`.distill`): per entry a prepared copy distilled from the original for a
  few hundred steps (soft labels only), scored by −KL from the original on held-out data (Δ
  top-1 as a second column): it sees the network after the repairs fine-tuning makes first.
* ``callable`` (:mod:`.callable`): pass ``method=f``, any user score ``f(prepared_model) ->
  float``, cached and sharded the same way.

A new method is one module here with a function decorated by
``@register_importance_method(name)`` (taking an :class:`ImportanceRequest`, returning an
:class:`ImportanceResult`), plus its import below. The rest: :mod:`.entries` (the entries and
each entry's plan), :mod:`.digests` (what identifies a table's inputs), :mod:`.measure`
(``measure_importance``), :mod:`.csv_output` (the paper's raw ``importance.csv``).
"""

from depthfx.measure.importance import (  # noqa: F401  (registration)
    callable,
    distill,
    finetune,
    proxy,
)
from depthfx.measure.importance.csv_output import write_raw_csv
from depthfx.measure.importance.digests import data_digest, model_hash
from depthfx.measure.importance.entries import MergeRule, entries_of, entry_plan, fastest_merges
from depthfx.measure.importance.finetune import PAPER_COLUMNS
from depthfx.measure.importance.measure import Method, measure_importance
from depthfx.measure.importance.methods import (
    IMPORTANCE_METHODS,
    ImportanceRequest,
    ImportanceResult,
    register_importance_method,
)
from depthfx.measure.importance.networks import build_network, fast_copy
from depthfx.measure.importance.proxy_data import proxy_batches

__all__ = [
    "IMPORTANCE_METHODS",
    "PAPER_COLUMNS",
    "ImportanceRequest",
    "ImportanceResult",
    "MergeRule",
    "Method",
    "build_network",
    "data_digest",
    "entries_of",
    "entry_plan",
    "fast_copy",
    "fastest_merges",
    "measure_importance",
    "model_hash",
    "proxy_batches",
    "register_importance_method",
    "write_raw_csv",
]
