"""Methods side by side on one recipe: plans runs and learning-rate sweeps, launches each training run, estimates the
time, and writes the report with its frontiers and intervals (`recipes/compare.py` is its script).

May import: everything below it (`goft.training`, `goft.evaluation`, `goft.data`, `goft.io`). Nothing imports it but
the scripts.
"""
