"""What a finished run leaves behind: the model card (`model_card`), the Hub push (`hub`), the logging targets
(`logging_targets`) and merging an adapter into its base (`merging`).

May import: `goft.io`, `goft.data`, `goft.training.runs`, huggingface_hub.
"""
