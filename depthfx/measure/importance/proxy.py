"""The ``proxy`` importance method (the default, no training): eval-mode outputs of each entry's
network on the proxy's input data against the base network's.

Score −KL(softmax(base) ‖ softmax(entry)) for classifiers, −relative MSE otherwise, Δ top-1 in
percentage points when labels are given (exact estimate only). Two estimates:
``estimate="fisher"`` (default, :mod:`depthfx.measure.importance.fisher`) runs only each entry's
changed region and takes the rest of the network to second order from base-network gradients;
``estimate="exact"`` (:mod:`depthfx.measure.importance.exact`) runs every entry's network to the
output. ``bn_recalibration=True`` (:mod:`depthfx.measure.importance.recalibrated`) re-estimates
every entry's BN statistics on the proxy's data first and runs the networks to the output.
"""

from __future__ import annotations

from depthfx.errors import DepthFXError
from depthfx.measure.importance.digests import keys_digest
from depthfx.measure.importance.exact import exact_proxy
from depthfx.measure.importance.fisher import FISHER_BATCH, fisher_proxy
from depthfx.measure.importance.methods import (
    ImportanceRequest,
    ImportanceResult,
    register_importance_method,
)
from depthfx.measure.importance.recalibrated import recalibrated_proxy


@register_importance_method("proxy", norm="none", alpha=1.0)
def proxy_importance(request: ImportanceRequest) -> ImportanceResult:
    """The proxy with ``request.estimate``; the Fisher proxy's cache is keyed by the model,
    the merge rule, the strided mode and the entries (and by its own data and settings)."""
    r = request
    if r.bn_recalibration:
        if r.data is None:
            raise DepthFXError("bn_recalibration=True needs data to re-estimate BN on")
        return recalibrated_proxy(
            r.analysis, r.keys, r.data, r.merges, score=r.score, images=r.images,
            batch_size=r.batch_size or 64, seed=r.seed, progress=r.progress,
            one_pass=r.bn_recalibration == "one-pass",
        )  # fmt: skip
    if r.estimate == "fisher":
        return fisher_proxy(
            r.analysis, r.keys, r.data, r.merges, score=r.score, images=r.images,
            batch_size=r.batch_size or FISHER_BATCH, seed=r.seed, progress=r.progress,
            cache=r.cache, identity={
                "model": r.model_id, "merges": r.merge_id, "strided":
                r.analysis.options["strided"], "entries": keys_digest(r.keys),
            },
        )  # fmt: skip
    if r.estimate == "exact":
        return exact_proxy(
            r.analysis, r.keys, r.data, r.merges, score=r.score, images=r.images,
            batch_size=r.batch_size or 64, seed=r.seed, progress=r.progress,
        )  # fmt: skip
    raise DepthFXError(f"unknown estimate {r.estimate!r}: use 'fisher' or 'exact'")


__all__ = ["proxy_importance"]
