"""The ``depthfx`` torch.compile backend (entry point ``depthfx = "depthfx.dynamo:backend"``).

* ``entry``: the backend itself: options, plan loading, training refusal, the output check
  against the captured graph, the hand-off to the delegate backend;
* ``rewrite``: the plan's merge groups replaced by one conv each in dynamo's captured graph,
  with chains split by graph breaks reported and left unmerged;
* ``maps``: the float64 affine conv map of a group input, node by node, on the shared algebra.
"""

from depthfx.dynamo.entry import backend
from depthfx.dynamo.rewrite import GraphBreakWarning, NotMergedWarning, Report, rewrite

__all__ = ["GraphBreakWarning", "NotMergedWarning", "Report", "backend", "rewrite"]
