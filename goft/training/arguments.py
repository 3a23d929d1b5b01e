"""The recipe dataclasses goft adds to TRL's (`SFTConfig`/`DPOConfig`, `ModelConfig`, `ScriptArguments`).

YAML keys and CLI flags are these field names; TRL's `TrlParser` merges defaults < YAML < CLI.
"""

from dataclasses import dataclass, field

from trl import ModelConfig, ScriptArguments

ADAPTER_CHOICES = ("givens", "lora")


@dataclass
class DataArguments(ScriptArguments):
    """Where the data comes from: `dataset_name` is a local JSON/JSONL file or folder, or a Hub dataset id."""

    dataset_test_size: float = field(
        default=0.1,
        metadata={"help": "Fraction held out as the test split when the dataset has no `dataset_test_split`."},
    )
    task_eval_samples: int = field(
        default=0,
        metadata={
            "help": "Held-out examples scored before and after training (SFT: exact match of the greedy answer; "
            "DPO: reward margin and accuracy). 0 skips it."
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Start afresh in an `output_dir` that holds a finished run or checkpoints."},
    )


@dataclass
class ModelArguments(ModelConfig):
    """TRL's `ModelConfig` plus GGUF files; `model_name_or_path` may also name an embedded model or an adapter folder."""

    bnb_4bit_compute_dtype: str | None = field(
        default=None,
        metadata={"help": "Compute dtype of 4-bit layers; default: `dtype` (float32 when that is auto or unset). "
                  "`bnb_4bit_quant_storage` defaults to it, so that DeepSpeed ZeRO-3 can shard the 4-bit weights."},
    )
    gguf_file: str | None = field(
        default=None,
        metadata={"help": "GGUF file inside `model_name_or_path` to load (dequantized) instead of safetensors."},
    )


@dataclass
class AdapterArguments:
    """Which adapter is trained. `givens` (strict GOFT) is the default; `lora` is the familiar baseline."""

    adapter: str = field(default="givens", metadata={"help": "Adapter method.", "choices": list(ADAPTER_CHOICES)})
    givens_quasi: bool = field(
        default=False,
        metadata={"help": "qGOFT: free 2x2 blocks, kept near orthogonal by a penalty added to the loss."},
    )
    givens_scaling: bool = field(default=False, metadata={"help": "GOFT*: learnable per-neuron norm scaling."})
    givens_penalty_weight: float = field(
        default=0.01, metadata={"help": "Weight of the qGOFT orthogonality penalty in the training loss."}
    )
    adapter_target_modules: list[str] | None = field(
        default=None,
        metadata={"help": "Modules to adapt (names, a regex, or all-linear); defaults to the model type's usual set."},
    )
    allow_non_orthogonal_alignment: bool = field(
        default=False,
        metadata={
            "help": "Baseline experiments only: let an alignment stage (DPO) train an adapter that is not exactly "
            "orthogonal. Off by default; recorded in the model card."
        },
    )
