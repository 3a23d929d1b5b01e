"""The recipe stages, each described once: its name, the dataset columns it trains on, and whether it is an
alignment stage (only an exactly orthogonal adapter may train it unless waived, and an adapter it continues becomes
its frozen reference)."""

from dataclasses import dataclass

SFT_COLUMNS = ("messages",)  # conversations
DPO_COLUMNS = ("prompt", "chosen", "rejected")  # preference pairs


@dataclass(frozen=True)
class RecipeStage:
    name: str
    columns: tuple[str, ...]
    alignment: bool

    @property
    def title(self) -> str:
        return self.name.upper()


SFT = RecipeStage("sft", SFT_COLUMNS, alignment=False)
DPO = RecipeStage("dpo", DPO_COLUMNS, alignment=True)
STAGES = {stage.name: stage for stage in (SFT, DPO)}
