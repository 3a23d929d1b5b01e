"""The recipe dataclasses goft adds to TRL's (`SFTConfig`/`DPOConfig`, `ModelConfig`, `ScriptArguments`), and the
keys of `recipes/merge.py` (`MergeArguments`). The data keys are `goft.data.arguments`.

YAML keys and CLI flags are these field names; TRL's `TrlParser` merges defaults < YAML < CLI.
"""

import math
from dataclasses import dataclass, field
from typing import Optional

from trl import ModelConfig

ADAPTER_CHOICES = ("givens", "sorsa", "hra", "oft", "boft", "road", "lora")


@dataclass
class ModelArguments(ModelConfig):
    """TRL's `ModelConfig` plus GGUF files; `model_name_or_path` may also name an embedded model or an adapter
    folder."""

    bnb_4bit_compute_dtype: str | None = field(
        default=None,
        metadata={
            "help": "Compute dtype of 4-bit layers; default: `dtype` (float32 when that is auto or unset). "
            "`bnb_4bit_quant_storage` defaults to it, so that DeepSpeed ZeRO-3 can shard the 4-bit weights."
        },
    )
    gguf_file: str | None = field(
        default=None,
        metadata={"help": "GGUF file inside `model_name_or_path` to load (dequantized) instead of safetensors."},
    )


@dataclass
class AdapterArguments:
    """Which adapter is trained and its hyper-parameters. `givens` (strict GOFT) is the default; `sorsa` is goft's own
    SORSA; `hra`, `oft`, `boft`, `road` and `lora` are peft's (LoRA's sizes are TRL's `lora_*` keys)."""

    adapter: str = field(default="givens", metadata={"help": "Adapter method.", "choices": list(ADAPTER_CHOICES)})
    givens_quasi: bool = field(
        default=False,
        metadata={"help": "qGOFT: free 2x2 blocks, kept near orthogonal by a penalty added to the loss."},
    )
    givens_scaling: bool = field(default=False, metadata={"help": "GOFT*: learnable per-neuron norm scaling."})
    givens_max_angle: float = field(
        default=math.pi,
        metadata={"help": "Bound on every Givens rotation angle in radians, theta = max_angle * tanh(a); in (0, pi]."},
    )
    givens_penalty_weight: float = field(
        default=0.01, metadata={"help": "Weight of the qGOFT orthogonality penalty in the training loss."}
    )
    sorsa_r: int = field(default=128, metadata={"help": "SORSA: how many top singular triplets are trained."})
    sorsa_gamma: float = field(
        default=4e-4,
        metadata={
            "help": "SORSA: gamma of the orthonormality regulariser, applied after gradient clipping with "
            "its gradient scaled by gamma / learning rate. 0 turns it off."
        },
    )
    hra_r: int = field(default=8, metadata={"help": "HRA: number of Householder reflections (even: identity init)."})
    hra_apply_gs: bool = field(
        default=False, metadata={"help": "HRA: Gram-Schmidt orthogonalise the reflections (no regulariser then)."}
    )
    hra_lambda: float = field(
        default=1e-4, metadata={"help": "HRA: weight of the orthogonality regulariser of the reflections. 0: off."}
    )
    oft_block_size: int = field(default=32, metadata={"help": "OFT: size of the orthogonal diagonal blocks."})
    oft_use_cayley_neumann: bool = field(
        default=True,
        metadata={
            "help": "OFT: approximate the Cayley transform by a Neumann series (faster, not exactly orthogonal)."
        },
    )
    boft_block_size: int = field(default=4, metadata={"help": "BOFT: size of the butterfly blocks."})
    boft_n_butterfly_factor: int = field(default=1, metadata={"help": "BOFT: number of butterfly factors."})
    road_variant: str = field(
        default="road_1", metadata={"help": "RoAd variant.", "choices": ["road_1", "road_2", "road_4"]}
    )
    road_group_size: int = field(default=64, metadata={"help": "RoAd: elements grouped per set of 2D rotations."})
    adapter_target_modules: list[str] | None = field(
        default=None,
        metadata={"help": "Modules to adapt (names, a regex, or all-linear); defaults to the model type's usual set."},
    )
    allow_non_orthogonal_alignment: bool = field(
        default=False,
        metadata={
            "help": "Baseline experiments only: let an alignment stage (DPO) train an adapter other than strict "
            "GOFT. Off by default; recorded in the model card."
        },
    )


@dataclass
class RetentionArguments:
    """What the run keeps of the base model's knowledge: measured before and after training, and bounded during it."""

    retention_eval: bool = field(
        default=False,
        metadata={
            "help": "Ask the retention questions before and after training and report the share of those the "
            "base answers correctly that the model still answers correctly (main process; not under "
            "DeepSpeed)."
        },
    )
    retention_questions: str | None = field(
        default=None,
        metadata={
            "help": "With `retention_eval`: JSONL of general-knowledge questions (id, topic, question, "
            "answers); default: the set that ships with goft."
        },
    )
    forgetting_budget: float | None = field(
        default=None,
        metadata={
            "help": "Largest allowed forgetting, as the mean KL(base || tuned) per token on a small general-text "
            "set, measured every `measure_steps`. A run that would exceed it stops, and the result "
            "is the adapter of the last measurement within the budget."
        },
    )
    task_target_nll: float | None = field(
        default=None,
        metadata={
            "help": "SFT: stop training once the answers' NLL per token is at most this, measured every "
            "`measure_steps` on a fixed sample of 32 training conversations (the held-out split stays "
            "untouched): no training past the task target."
        },
    )
    measure_steps: int = field(
        default=5,
        metadata={"help": "Optimizer steps between two measurements of `forgetting_budget` and `task_target_nll`."},
    )
    forgetting_texts: int = field(
        default=8, metadata={"help": "Paragraphs of the general text the forgetting budget is measured on."}
    )
    general_text: str | None = field(
        default=None,
        metadata={
            "help": 'With `forgetting_budget`: JSONL of general text ({"text": ...} a line); default: the '
            "set that ships with goft (never trained on)."
        },
    )
    replay_share: float = field(
        default=0.0,
        metadata={
            "help": "SFT: share of the training rows that replay the base model's own answers to everyday "
            "requests (`replay_prompts`), generated at the start of the run: the adapter learns the task while "
            "keeping the model's behaviour elsewhere. 0 turns replay off."
        },
    )
    replay_prompts: str | None = field(
        default=None,
        metadata={
            "help": 'With `replay_share` or `anchor_weight`: JSONL of requests ({"prompt": ...} a line); default: the '
            "sets that ship with goft, 96 everyday requests and 120 short factual questions (none of them a "
            "retention question or about a retention question's fact)."
        },
    )
    anchor_weight: float = field(
        default=0.0,
        metadata={
            "help": "Weight of the anchor term: KL(base || tuned) per token on the base model's own answers to "
            "the replay prompts, one batch of `anchor_batch_size` per step, added to the loss (one process; "
            "not under DeepSpeed or FSDP). 0 turns it off."
        },
    )
    anchor_batch_size: int = field(
        default=4, metadata={"help": "With `anchor_weight`: anchor conversations per training step."}
    )
    replay_answer_tokens: int = field(
        default=128,
        metadata={
            "help": "With `replay_share` or `anchor_weight`: the longest base answer used, in tokens; longer answers "
            "are left out (a cut answer would teach the model to stop mid-sentence)."
        },
    )


@dataclass
class MergeArguments:
    """`recipes/merge.py`: which adapter is merged into its base, and where the standalone model goes."""

    adapter_path: str = field(metadata={"help": "Directory holding adapter_config.json and the adapter weights."})
    output_dir: str = field(metadata={"help": "Where to write the merged model (must be new or empty)."})
    base_model: Optional[str] = field(
        default=None, metadata={"help": "Base model id or path; default: the one recorded in the adapter config."}
    )
    dtype: str = field(default="auto", metadata={"help": "auto, float32, bfloat16 or float16."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Allow writing into a non-empty output_dir."})
