"""The recipe stages, each described once: its name, the dataset types it reads (TRL's "Dataset formats and types",
see `dataset_types`), and whether it is an alignment stage (only an exactly orthogonal adapter may train it unless
waived, and an adapter it continues becomes its frozen reference)."""

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetType:
    """One of TRL's dataset types: its name, the columns each row holds (`text` stands for the SFT config's
    `dataset_text_field`), and the type its rows become when goft normalises them (itself, or explicit preference)."""

    name: str
    columns: tuple[str, ...]
    normalised: str = ""

    @property
    def canonical(self) -> str:
        return self.normalised or self.name


LANGUAGE_MODELING = DatasetType("language modeling", ("text",))
CONVERSATIONAL = DatasetType("conversational", ("messages",))
PROMPT_COMPLETION = DatasetType("prompt-completion", ("prompt", "completion"))
PREFERENCE = DatasetType("preference", ("prompt", "chosen", "rejected"))
IMPLICIT_PREFERENCE = DatasetType("implicit prompt preference", ("chosen", "rejected"), normalised="preference")
KEPT_COLUMNS = ("chat_template_kwargs", "tools")  # read by TRL per row; every other extra column is dropped


@dataclass(frozen=True)
class RecipeStage:
    name: str
    types: tuple[DatasetType, ...]  # the dataset types it reads, in the order a row is recognised
    alignment: bool

    @property
    def title(self) -> str:
        return self.name.upper()


SFT = RecipeStage("sft", (CONVERSATIONAL, PROMPT_COMPLETION, LANGUAGE_MODELING), alignment=False)
DPO = RecipeStage("dpo", (PREFERENCE, IMPLICIT_PREFERENCE), alignment=True)
STAGES = {stage.name: stage for stage in (SFT, DPO)}
