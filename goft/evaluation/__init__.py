"""Evaluation of trained adapters against their base model; it measures only: what the adapter did to the weights
(`weights`), the shift of the output distribution on general text (`shift`), knowledge retention on
general-knowledge questions (`knowledge`), drift of open answers (`drift`), task metrics (`tasks`), running a model
for scoring (`model_io`), one adapter or many on one base (`runner`), learning-rate sweeps compared at equal task
gain (`frontier`) and the report (`report`). The evaluation sets ship as package data (`assets`).

May import: `goft.data`, `goft.io`, `goft.tuners`, `goft.methods`. Not `goft.training` or `goft.comparison`, which
sit above it.
"""
