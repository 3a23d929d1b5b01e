"""The keys of evaluation: the evaluation sets, one group for every script that measures adapters
(`recipes/evaluate.py`, `recipes/compare.py`), and what `recipes/evaluate.py` evaluates."""

from dataclasses import dataclass, field
from typing import Optional

from goft.evaluation import assets
from goft.evaluation.runner import EvaluationSets


@dataclass
class EvaluationSetArguments:
    """The sets adapters are measured on; each defaults to the one that ships with goft."""

    general_text: str = field(
        default=str(assets.GENERAL_TEXT),
        metadata={"help": 'JSONL of general text ({"text": ...} a line): the forgetting set, never trained on.'},
    )
    retention_questions: str = field(
        default=str(assets.RETENTION_QUESTIONS),
        metadata={"help": 'JSONL of general-knowledge questions ({"id", "topic", "question", "answers"}).'},
    )
    open_instructions: str = field(
        default=str(assets.OPEN_INSTRUCTIONS),
        metadata={"help": 'JSONL of open instructions ({"instruction"}): the drift of the answers.'},
    )
    task_eval_samples: int = field(default=40, metadata={"help": "Held-out examples for the task metric; 0 skips."})
    max_length: int = field(default=256, metadata={"help": "Tokens per general-text paragraph or preference pair."})

    def evaluation_sets(self, dataset_name: Optional[str] = None) -> EvaluationSets:
        """The sets as the evaluator takes them; `dataset_name` scores every adapter's task on that dataset."""
        return EvaluationSets(
            general_text=self.general_text,
            retention_questions=self.retention_questions,
            open_instructions=self.open_instructions,
            task_samples=self.task_eval_samples,
            max_length=self.max_length,
            dataset_name=dataset_name,
        )

    def set_locations(self) -> dict[str, str]:
        """The files the sets are read from, by what they are (an output folder must overlap none of them)."""
        return {
            "general text": self.general_text,
            "retention questions": self.retention_questions,
            "open instructions": self.open_instructions,
        }


@dataclass
class EvaluateArguments:
    """Which adapters, on which base, written where; the evaluation sets are `EvaluationSetArguments`."""

    adapters: list[str] = field(metadata={"help": "Adapter folders to evaluate (adapter_config.json + weights)."})
    base_model: Optional[str] = field(
        default=None, metadata={"help": "Base model id or path; default: the one the adapters record."}
    )
    dataset_name: Optional[str] = field(
        default=None,
        metadata={
            "help": "Score every adapter's task on this dataset's test split instead of the "
            "held-out split of its own run."
        },
    )
    dtype: str = field(default="float32", metadata={"help": "auto, float32, bfloat16 or float16."})
    output_dir: str = field(default="runs/eval", metadata={"help": "Where evaluation.json and evaluation.md go."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Replace an earlier evaluation there."})
