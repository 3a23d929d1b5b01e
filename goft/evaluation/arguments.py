"""The evaluation-set keys, one group for every script that measures adapters (`recipes/evaluate.py`,
`recipes/compare.py`): which sets, and how much of each."""

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
