"""Evaluation of trained adapters against their base model: what the adapter did to the weights (`weights`), the
shift of the output distribution on general text (`shift`), knowledge retention on general-knowledge questions
(`knowledge`), drift of open answers (`drift`), task metrics (`tasks`), one adapter or many on one base (`runner`),
learning-rate sweeps compared at equal task gain (`frontier`, `compare`) and the report (`report`). The evaluation
sets ship as package data (`assets`)."""
