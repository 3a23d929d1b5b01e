"""The YAML recipe file (`--config`): read with repeated keys refused, and every value checked against the type of the
recipe key it sets. TRL's parser takes the file's values in as defaults and converts only strings, so a list where a
number belongs would otherwise reach the trainer as it is.

YAML itself reads `1e-3` as a string (a YAML float needs a dot: `1.0e-3`); a string that converts to the key's type
is accepted, as the parser converts it.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Hashable

import yaml

from goft.errors import RecipeError

ENV_KEY = "env"  # TRL's mapping of environment variables to set, not a recipe key
MERGE_TAG = "tag:yaml.org,2002:merge"
TRUE_WORDS = ("true", "yes", "t", "y", "1")  # what transformers' string_to_bool reads as a boolean
FALSE_WORDS = ("false", "no", "f", "n", "0")
PLURALS = {int: "whole numbers", float: "numbers", str: "strings", bool: "true/false values"}


class UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a key given twice in one mapping (plain YAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        first_lines: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):
                continue  # the base constructor refuses it with YAML's own message
            line = key_node.start_mark.line + 1
            if key in first_lines:
                raise RecipeError(
                    f"The key {key!r} is given twice in the recipe file {self.name!r}: on line "
                    f"{first_lines[key]} and on line {line}. Keep one of the two lines."
                )
            first_lines[key] = line
        return super().construct_mapping(node, deep=deep)


def load_recipe_file(path: str) -> dict:
    """The recipe file's mapping of keys to values; a missing file, invalid YAML, a repeated key or a file that is
    not a mapping is refused."""
    try:
        with open(path, encoding="utf-8") as handle:
            recipe = yaml.load(handle, Loader=UniqueKeyLoader)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise RecipeError(f"The recipe file {path!r} does not exist.") from None
    except PermissionError:
        raise RecipeError(f"The recipe file {path!r} cannot be read: no read permission.") from None
    except UnicodeDecodeError as error:
        raise RecipeError(
            f"The recipe file {path!r} is not UTF-8 text: byte {error.object[error.start]:#04x} at "
            f"offset {error.start} cannot be decoded. Re-encode it as UTF-8."
        ) from None
    except yaml.YAMLError as error:
        raise RecipeError(f"The recipe file {path!r} is not valid YAML: {error}") from None
    if not isinstance(recipe, dict):
        found = "nothing" if recipe is None else f"a {type(recipe).__name__}"
        raise RecipeError(
            f"The recipe file {path!r} must hold a mapping of recipe keys to values (lines like "
            f"`learning_rate: 1.0e-4`), but it holds {found}."
        )
    return recipe


def field_types(dataclass_types) -> dict[str, object]:
    """Recipe key -> the annotation of the dataclass field it sets (the first dataclass that has it)."""
    found = {}
    for dataclass_type in dataclass_types:
        try:
            hints = typing.get_type_hints(dataclass_type)
        except (NameError, TypeError):
            hints = {}
        for field in dataclasses.fields(dataclass_type):
            annotation = hints.get(field.name, field.type)
            if field.init and field.name not in found and not isinstance(annotation, str):
                found[field.name] = annotation
    return found


def _converts(kind, value) -> bool:
    try:
        kind(value)
    except (TypeError, ValueError):
        return False
    return True


def _is_whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _same_literal(value, choice) -> bool:
    return type(value) is type(choice) and value == choice


def accepts(annotation, value) -> bool:
    """Whether `value`, as YAML gave it, is of `annotation`'s type (a string only when it converts)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is typing.Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(accepts(arm, value) for arm in args)
    if annotation is type(None):
        return value is None
    if origin is typing.Literal:
        return any(_same_literal(value, choice) for choice in args)
    if annotation in (list, tuple, set) or origin in (list, tuple, set):
        item = args[0] if args else typing.Any
        if isinstance(value, list):
            return all(accepts(item, element) for element in value)
        return item is str and isinstance(value, str)  # one name for a list of names
    if annotation is dict or origin is dict:
        return isinstance(value, dict)
    if annotation is bool:
        return isinstance(value, bool) or isinstance(value, str) and value.lower() in TRUE_WORDS + FALSE_WORDS
    if annotation is int:
        return _is_whole(value) or isinstance(value, str) and _converts(int, value)
    if annotation is float:
        return _is_number(value) or isinstance(value, str) and _converts(float, value)
    if annotation is str:
        return isinstance(value, str)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return isinstance(value, annotation) or any(value == member.value for member in annotation)
    return True  # a type a recipe file cannot spell (a config object): left to its own checks


def describe_type(annotation) -> str:
    """`annotation` in words: "a number", "a list of strings or null", ..."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        parts = [describe_type(arm) for arm in args if arm is not type(None)]
        if type(None) in args:
            parts.append("null")
        return " or ".join(dict.fromkeys(parts))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(choice) for choice in args)
    if annotation in (list, tuple, set) or origin in (list, tuple, set):
        return f"a list of {PLURALS.get(args[0], 'values')}" if args else "a list"
    if annotation is dict or origin is dict:
        return "a mapping"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "one of " + ", ".join(str(member.value) for member in annotation)
    words = {int: "a whole number", float: "a number", bool: "true or false", str: "a string"}
    return words.get(annotation, getattr(annotation, "__name__", str(annotation)))


def describe_value(value) -> str:
    """What YAML made of a value: "[0.001, 0.002] (a list)"."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"{str(value).lower()} (true/false)"
    kind = {int: "a whole number", float: "a number", str: "a string", list: "a list", dict: "a mapping"}.get(
        type(value), type(value).__name__
    )
    return f"{value!r} ({kind})"


def _how_to_fix(key: str, value, annotation, default) -> str:
    if isinstance(value, list) and not accepts(annotation, []):
        return "A recipe trains with one value per key: give one (recipes/compare.py sweeps several)."
    if not isinstance(value, str) and accepts(annotation, "text") and not accepts(annotation, 0.5):
        if isinstance(value, bool):
            return (
                f'Quote it to keep it text, e.g. `{key}: "{"yes" if value else "no"}"`: YAML reads a bare '
                "yes/no/on/off as true/false."
            )
        return f'Quote it to keep it text: `{key}: "{value}"`.'
    if type(default) in (int, float, str, bool) and accepts(annotation, default):
        example = yaml.safe_dump({key: default}, default_flow_style=True).strip()[1:-1]
        return f"Write a value of that type, e.g. `{example}` (its default)."
    return "Write a value of that type."


def _defaults(dataclass_types) -> dict:
    found = {}
    for dataclass_type in dataclass_types:
        for field in dataclasses.fields(dataclass_type):
            found.setdefault(field.name, field.default)
    return found


def _choices(parser) -> dict[str, list[str]]:
    """Recipe key -> the values it may take, where the parser limits them (enums, Literals, `choices`)."""
    return {
        action.dest: [str(choice) for choice in action.choices]
        for action in parser._actions
        if action.choices and action.option_strings
    }


def check_recipe_values(recipe: dict, parser, path: str) -> None:
    """Every value of the recipe file has the type of the recipe key it sets, and one of its choices where the key
    has them (the parser checks choices on the command line only)."""
    annotations = field_types(parser.dataclass_types)
    choices = _choices(parser)
    defaults = _defaults(parser.dataclass_types)
    for key, value in recipe.items():
        if key == ENV_KEY or key not in annotations:
            continue  # unknown keys are refused by name elsewhere
        annotation = annotations[key]
        if not accepts(annotation, value):
            wanted = f"one of {', '.join(choices[key])}" if key in choices else describe_type(annotation)
            raise RecipeError(
                f"`{key}` in the recipe file {path!r} is {describe_value(value)}, but it takes "
                f"{wanted}. {_how_to_fix(key, value, annotation, defaults[key])}"
            )
        given = value if isinstance(value, list) else [value]
        wrong = [item for item in given if isinstance(item, str) and key in choices and item not in choices[key]]
        if wrong:
            raise RecipeError(
                f"`{key}` in the recipe file {path!r} is {wrong[0]!r}, which is not one of its "
                f"choices: {', '.join(choices[key])}. Pick one of these."
            )


def recipe_config_path(argv: list[str]) -> str | None:
    """The path after `--config`, or None without one."""
    if "--config" not in argv:
        return None
    if argv.index("--config") + 1 >= len(argv):
        raise RecipeError("`--config` needs the path of a YAML recipe.")
    return argv[argv.index("--config") + 1]
