"""The restore pipeline: plan a snapshot tree, write content pack by pack, apply metadata.

``restore_tree`` is the entry point (``cairn.ops.restore`` resolves snapshots around it).
"""

from cairn.restorer.plan import Selector, build_plan
from cairn.restorer.progress import ProgressCallback, RestoreProgress
from cairn.restorer.restorer import RestoreReport, check_target, restore_tree, verify_tree

__all__ = [
    "ProgressCallback",
    "RestoreProgress",
    "RestoreReport",
    "Selector",
    "build_plan",
    "check_target",
    "restore_tree",
    "verify_tree",
]
