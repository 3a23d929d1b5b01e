"""Recipe keys as real recipes spell them. alignment-handbook's recipes and TRL's example command lines were written
against older transformers and TRL, and the handbook defines keys of its own; a user's recipes run unchanged:

- a key that was renamed (`torch_dtype`, `max_seq_length`, `warmup_ratio`, ...) or a value that was (`packing_strategy:
  ffd`) is read as today's spelling, and one line names that spelling so that the recipe can be migrated at leisure;
- a handbook key that today's stack no longer has is honoured with the handbook's meaning (`chat_template` inline,
  `max_prompt_length`, `dataset_mixer`, `dataset_splits`, `dataset_configs`; see `goft.data`), with one line too;
- TRL's `use_peft` (with its `lora_*` keys) means TRL's LoRA, as in TRL: `adapter: lora`;
- TRL's `model_init_kwargs` is read entry by entry into the keys goft loads the model with;
- what cannot keep its meaning is refused with one line that says what to write instead.

`migrate` rewrites the recipe file's mapping and the command line before TRL's parser reads them; the effective
recipe (model card, run record) shows each key as the run used it, with a comment naming the key it was given as.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field

from goft.errors import RecipeError
from goft.training.arguments.recipe_file import FALSE_WORDS, TRUE_WORDS
from goft.training.parallel.processes import is_main_process


@dataclass(frozen=True)
class Renamed:
    """A key the stack renamed: `old` is read as `new`; `why` names who renamed it."""

    old: str
    new: str
    why: str


RENAMED = {
    entry.old: entry
    for entry in (
        Renamed("torch_dtype", "dtype", "transformers 5 and TRL's ModelConfig renamed it"),
        Renamed("max_seq_length", "max_length", "TRL's SFTConfig renamed it"),
        Renamed("evaluation_strategy", "eval_strategy", "transformers renamed it"),
        Renamed("warmup_ratio", "warmup_steps", "transformers 5 reads a `warmup_steps` below 1 as a share"),
        Renamed("preprocessing_num_workers", "dataset_num_proc", "alignment-handbook's older key; TRL spells it so"),
        Renamed("hub_model_revision", "hub_revision", "alignment-handbook's key; transformers spells it so"),
        Renamed("push_to_hub_model_id", "hub_model_id", "transformers renamed it"),
    )
}
# (key, old value): (today's value, why)
RENAMED_VALUES = {
    ("packing_strategy", "ffd"): ("bfd", "TRL replaced first-fit decreasing packing by best-fit decreasing"),
}
# alignment-handbook keys goft honours with the handbook's meaning: key -> today's nearest spelling
HONOURED = {
    "chat_template": "`chat_template_path` (a .jinja file) in TRL; goft uses the inline template as the tokenizer's",
    "max_prompt_length": "no key in TRL 1.x; goft keeps each prompt's last `max_prompt_length` tokens, as TRL did",
    "dataset_mixer": "`dataset_mixture` in today's alignment-handbook; read with the older mixer's meaning",
    "dataset_splits": "`dataset_train_split` and `dataset_test_split`",
    "dataset_configs": "each dataset's `config` in `dataset_mixture`",
}
LORA = "lora"
USE_PEFT = "use_peft"
ADAPTER = "adapter"
MODEL_INIT_KWARGS = "model_init_kwargs"
# model_init_kwargs entry -> the recipe key goft loads the model with
MODEL_INIT_ENTRIES = {
    "dtype": "dtype",
    "torch_dtype": "dtype",
    "attn_implementation": "attn_implementation",
    "trust_remote_code": "trust_remote_code",
    "revision": "model_revision",
}


@dataclass
class Migration:
    """The recipe file's mapping and the command line in today's spelling, and a note per key read in an older one
    ({today's key: note})."""

    recipe: dict
    argv: list[str]
    notes: dict[str, str] = field(default_factory=dict)

    def note(self, key: str, line: str) -> None:
        """Remember `line` for today's `key` (the first note on a key is kept)."""
        self.notes.setdefault(key, line)

    def print_notes(self) -> None:
        """One line per key read in an older spelling, once per launch (the main process)."""
        if not self.notes or not is_main_process():
            return
        lines = "".join(f"goft: {note}\n" for note in self.notes.values())
        sys.stderr.write(lines)
        sys.stderr.flush()


def _refuse_both(old: str, new: str, where: str) -> None:
    raise RecipeError(
        f"Both `{old}` and `{new}` are given {where}; `{old}` is the older spelling of `{new}`. Keep `{new}` only."
    )


def _as_bool(value, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in TRUE_WORDS + FALSE_WORDS:
        return value.lower() in TRUE_WORDS
    raise RecipeError(f"`{key}` is {value!r}, but it takes true or false.")


def _model_init_entries(value) -> list[tuple[str, str, object]]:
    """TRL's `model_init_kwargs` (a mapping, or its JSON text on the command line) as (entry, recipe key, value)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise RecipeError(f"`{MODEL_INIT_KWARGS}` is not a JSON mapping: {error}.") from None
    if value is None:
        return []
    if not isinstance(value, dict):
        raise RecipeError(f"`{MODEL_INIT_KWARGS}` must be a mapping of loading options, not {value!r}.")
    entries = []
    for name, entry in value.items():
        key = MODEL_INIT_ENTRIES.get(name)
        if key is None:
            raise RecipeError(
                f"`{MODEL_INIT_KWARGS}.{name}` cannot be honoured: goft loads the model from its own keys "
                f"({', '.join(f'`{k}`' for k in dict.fromkeys(MODEL_INIT_ENTRIES.values()))}, `load_in_4bit`, "
                "`load_in_8bit`) and places it with accelerate. Write the matching key, or drop the entry."
            )
        entries.append((name, key, entry))
    return entries


def _migrate_mapping(given: dict, migration: Migration, where: str) -> dict:
    """The keys of one source (the recipe file, or the command line as a mapping) in today's spelling."""
    result = {}
    for key, value in given.items():
        if key in RENAMED:
            entry = RENAMED[key]
            if entry.new in given:
                _refuse_both(key, entry.new, where)
            line = f"`{key}` is read as `{entry.new}` ({entry.why}); write `{entry.new}` to migrate."
            migration.note(entry.new, line)
            key = entry.new
        if isinstance(value, str) and (key, value) in RENAMED_VALUES:
            new_value, why = RENAMED_VALUES[(key, value)]
            migration.note(key, f"`{key}: {value}` is read as `{key}: {new_value}` ({why}).")
            value = new_value
        if key in HONOURED:
            migration.note(key, f"`{key}` (alignment-handbook's key) is honoured; today's spelling: {HONOURED[key]}.")
        if key == USE_PEFT:
            if not _as_bool(value, USE_PEFT):
                raise RecipeError(
                    "`use_peft: false` asks TRL for full fine-tuning, but goft trains adapters only: drop "
                    "`use_peft` (the default adapter is strict GOFT) or choose one with `adapter`."
                )
            if given.get(ADAPTER, LORA) != LORA:
                raise RecipeError(
                    f"`use_peft` selects TRL's LoRA, but `adapter: {given[ADAPTER]}` is given too; drop "
                    "`use_peft` to train that adapter, or drop `adapter`."
                )
            migration.note(ADAPTER, "`use_peft` is read as `adapter: lora` (TRL's LoRA, as in TRL).")
            key, value = ADAPTER, LORA
        if key == MODEL_INIT_KWARGS:
            for name, entry_key, entry_value in _model_init_entries(value):
                if entry_key in given:
                    _refuse_both(f"{MODEL_INIT_KWARGS}.{name}", entry_key, where)
                migration.note(entry_key, f"`{MODEL_INIT_KWARGS}.{name}` is read as the recipe key `{entry_key}`.")
                result[entry_key] = entry_value
            continue
        result[key] = value
    return result


def _command_line_items(argv: list[str]) -> list[tuple[str, list[str]]]:
    """The command line as (flag, value tokens) items; tokens before the first flag are kept as ("", [token])."""
    items: list[tuple[str, list[str]]] = []
    for token in argv:
        if token.startswith("--"):
            flag, equals, value = token.partition("=")
            items.append((flag, [value] if equals else []))
        elif items and items[-1][0]:
            items[-1][1].append(token)
        else:
            items.append(("", [token]))
    return items


def _migrate_command_line(argv: list[str], migration: Migration) -> list[str]:
    items = _command_line_items(argv)
    flags = {flag[2:]: values for flag, values in items if flag and flag != "--config"}
    given = {}
    for key, values in flags.items():
        if key == USE_PEFT and not values:
            given[key] = True  # a bare boolean flag
        elif key == MODEL_INIT_KWARGS and values:
            given[key] = values[0]
        else:
            given[key] = values[0] if len(values) == 1 else values
    migrated = _migrate_mapping(given, migration, "on the command line")
    if migrated == given:
        return argv
    result = []
    for flag, values in items:
        if flag == "--config" or not flag:
            result += ([flag] if flag else []) + values
    for key, value in migrated.items():
        result.append(f"--{key}")
        if isinstance(value, list):
            result += value
        elif value is not None:
            result.append(_flag_value(value))
    return result


def _flag_value(value) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value) if isinstance(value, dict) else str(value)


def migrate(recipe: dict, argv: list[str], where: str = "in the recipe file") -> Migration:
    """The recipe file's mapping and the command line read into today's spelling (see the module's docstring)."""
    migration = Migration(recipe={}, argv=[])
    migration.recipe = _migrate_mapping(recipe, migration, where)
    migration.argv = _migrate_command_line(argv, migration)
    return migration


def annotate(recipe_yaml: str, notes: dict[str, str]) -> str:
    """The effective recipe's YAML with a comment line above each key read in an older spelling (`# dtype: given as
    `torch_dtype`: ...`); above, not beside, so that a value spanning lines is left whole."""
    lines = []
    for line in recipe_yaml.splitlines():
        key = line.split(":", 1)[0] if line[:1].isalpha() or line[:1] == "_" else None
        if key in notes:
            lines.append(f"# {notes[key]}")
        lines.append(line)
    return "\n".join(lines) + ("\n" if recipe_yaml.endswith("\n") else "")
