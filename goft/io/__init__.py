"""What a user hands goft and what a run leaves, read the same way by training, evaluation and the comparison: model
sources (local folders, Hub ids, GGUF files, embedded models) and their loading (`model_source`), whether an
adapter fits a base (`adapter_checks`), the output-folder protocol and finished-run records (`outputs`), local
paths (`paths`) and how results are written (`formats`).

May import: `goft.errors`, `goft.tuners`, `goft.methods`, peft, transformers, huggingface_hub. Not `goft.data`,
`goft.training`, `goft.evaluation` or `goft.comparison`.
"""
