"""Methods side by side on one recipe (`recipes/compare.py` is its script), one concern a module: what a comparison is
asked (`arguments`), the runs of its sweep, methods × learning rates, and their matched budget (`plan`), training
each run in its own process and reusing or resuming finished ones (`launch`), the time it will take (`estimate`), the
report: table, JSON with the sweep frontiers, plot (`report`), and the loop that trains and evaluates every run
(`runner`, whose `compare` is the entry).

May import: everything below it (`goft.training`, `goft.evaluation`, `goft.data`, `goft.io`). Nothing imports it but
the scripts.
"""

from goft.comparison.arguments import CompareArguments
from goft.comparison.plan import Run, as_flags
from goft.comparison.runner import compare

__all__ = ["CompareArguments", "Run", "as_flags", "compare"]
