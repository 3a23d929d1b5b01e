"""Parsing a recipe (defaults < YAML `--config` < CLI flags, unknown keys refused) and running it."""

import difflib
import os
import re
import sys

import yaml
from trl import TrlParser

from goft.data.arguments import DataArguments
from goft.errors import RecipeError
from goft.training.arguments import older_keys
from goft.training.arguments.checks import check_deepspeed_config
from goft.training.arguments.fields import AdapterArguments, ModelArguments, RetentionArguments
from goft.training.arguments.help import FullHelpAction, short_help
from goft.training.arguments.recipe_file import ENV_KEY, check_recipe_values, load_recipe_file, recipe_config_path
from goft.training.parallel.cpu_fsdp import honour_fsdp_on_cpu
from goft.training.parallel.processes import has_accelerator, leave_process_group, use_all_cpu_cores
from goft.training.publish.hub import redact, scrub
from goft.training.runs.run_spec import plain_value

SECRET_FLAGS = ("--hub_token",)
# argparse reads `-1e-3` as a flag (its own pattern knows only `-1` and `-.5`); these are values
NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|infinity|nan)$", re.IGNORECASE)
ARGUMENT_PREFIX = re.compile(r"^argument (-{1,2}[\w-]+)(/-{1,2}[\w-]+)*: ")


class RecipeParser(TrlParser):
    """The training recipes' `TrlParser`: `--help` fits one screen (the common keys); `--help_all` lists every key."""

    def __init__(self, dataclass_types):
        super().__init__(dataclass_types)
        self.add_argument("--help_all", action=FullHelpAction, help="Show every recipe key with its help and exit.")

    def format_help(self) -> str:
        return short_help(self)

    def format_full_help(self) -> str:
        return super().format_help()


def _refuse_command_line(message: str):
    """argparse's error, as a `RecipeError`: one `error:` line instead of a usage block."""
    message = ARGUMENT_PREFIX.sub(lambda match: f"`{match.group(1)}`: ", message)
    missing = message.startswith("the following arguments are required")
    fix = "Give them on the command line or in the YAML recipe" if missing else "Give each key one value of its type"
    raise RecipeError(f"{message[:1].upper()}{message[1:]}. {fix}; `--help` lists the keys with their defaults.")


def follow_house_rules(parser) -> None:
    """argparse's errors become `RecipeError`s, and negative numbers (`--learning_rate -1e-3`) are values."""
    parser.error = _refuse_command_line
    parser._negative_number_matcher = NEGATIVE_NUMBER


def make_recipe_parser(training_config_class) -> TrlParser:
    """A `TrlParser` over goft's dataclasses and TRL's `training_config_class` (SFTConfig, DPOConfig)."""
    parser = RecipeParser((DataArguments, training_config_class, ModelArguments, AdapterArguments, RetentionArguments))
    follow_house_rules(parser)
    if not has_accelerator():
        # TRL's configs default to bf16 and refuse to build without a GPU; on a CPU-only machine, train in fp32.
        parser.set_defaults(use_cpu=True, bf16=False)
    parser.allow_abbrev = False  # `--learning_rat` is a typo, not `--learning_rate`
    return parser


def check_known_keys(parser: TrlParser, keys: list[str], config_path: str | None) -> None:
    """Every key of the YAML recipe and every flag (`keys`, in today's spelling) is one the recipe knows; typos get
    the closest key."""
    known = {option[2:] for action in parser._actions for option in action.option_strings if option.startswith("--")}
    unknown = [key for key in keys if key not in known and not (key.startswith("no_") and key[3:] in known)]
    if not unknown:
        return
    described = []
    for key in unknown:
        close = difflib.get_close_matches(key, known, n=1)
        described.append(f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key))
    where = f"in {config_path} or on the command line" if config_path else "on the command line"
    listed = "`--help` lists the common ones, `--help_all` every one" if "help_all" in known else "`--help` lists them"
    raise RecipeError(
        f"Unknown recipe key(s) {where}: {', '.join(described)}. The keys are the fields of TRL's "
        f"trainer config and ModelConfig and goft's own ({listed})."
    )


def named_keys(recipe: dict, argv: list[str]) -> list[str]:
    """Keys given in the YAML recipe (`recipe`) and on the command line, in order."""
    keys = [k for k in recipe if k != ENV_KEY]
    for token in argv:
        if token.startswith("--") and token != "--config":
            key = token[2:].split("=", 1)[0]
            key = key[3:] if key.startswith("no_") and key not in keys else key
            if key not in keys:
                keys.append(key)
    return keys


def effective_recipe(keys: list[str], parsed, notes: dict[str, str] | None = None) -> str:
    """The run's recipe as YAML: every key the user set (file or flag) with the value it ended up with, a key read in
    an older spelling under today's with a comment saying how it was given."""
    recipe = {}
    for key in keys:
        for obj in parsed:
            if hasattr(obj, key):
                value = getattr(obj, key)
                recipe[key] = plain_value(value)
                break
    return older_keys.annotate(yaml.safe_dump(redact(recipe), sort_keys=False), notes or {})


def parse_recipe(parser: TrlParser, argv: list[str] | None = None):
    """(data, training, model, adapter, retention) arguments and the effective recipe YAML. Keys in an older
    spelling are read into today's first (`older_keys`), with one line each."""
    argv = list(sys.argv[1:] if argv is None else argv)
    follow_house_rules(parser)
    refuse_secret_flags(argv)
    config_path = recipe_config_path(argv)
    try:
        recipe = load_recipe_file(config_path) if config_path else {}
        migration = older_keys.migrate(recipe, argv, f"in the recipe file {config_path!r}")
        recipe, argv = migration.recipe, migration.argv
        keys = named_keys(recipe, argv)
        check_known_keys(parser, keys, config_path)
        check_recipe_values(recipe, parser, config_path)
        check_deepspeed_config(_given_value(argv, recipe, "deepspeed"))  # transformers reads it while parsing
        migration.print_notes()
        parsed = _parse_with_recipe(parser, recipe, argv)
    except yaml.YAMLError as error:
        raise RecipeError(f"The recipe file is not valid YAML: {error}") from None
    except ValueError as error:
        raise RecipeError(str(error)) from None
    return (*parsed, effective_recipe(keys, parsed, migration.notes))


def _parse_with_recipe(parser: TrlParser, recipe: dict, argv: list[str]):
    """TRL's parsing of a recipe, from the mapping already read (and migrated): the file's `env` is set, its values
    become the defaults, the command line overrides them."""
    recipe = dict(recipe)
    env = recipe.pop(ENV_KEY, {})
    if not isinstance(env, dict):
        raise RecipeError("`env` in the recipe file must be a mapping of environment variables to values.")
    for name, value in env.items():
        os.environ[name] = str(value)
    parser.set_defaults_with_config(**recipe)
    flags = list(argv)
    if "--config" in flags:
        index = flags.index("--config")
        del flags[index : index + 2]
    return parser.parse_args_into_dataclasses(args=flags)


def _given_value(argv: list[str], recipe: dict, key: str):
    """The value `key` was given: its last flag on the command line, else the recipe file's, else None."""
    value = recipe.get(key)
    for index, token in enumerate(argv):
        if token.startswith(f"--{key}="):
            value = token.split("=", 1)[1]
        elif token == f"--{key}" and index + 1 < len(argv):
            value = argv[index + 1]
    return value


def refuse_secret_flags(argv: list[str]) -> None:
    """Tokens on the command line leak: launchers print their command when a run fails, and every user of the
    machine can read it in the process list."""
    for token in argv:
        flag = token.split("=", 1)[0]
        if flag in SECRET_FLAGS:
            raise RecipeError(
                f"Do not pass `{flag}` on the command line: launchers print the command line when a "
                "run fails, and other users can read it in the process list. Set HF_TOKEN, run "
                "`hf auth login`, or put `hub_token` in the YAML recipe (it is kept out of logs, "
                "checkpoints and model cards)."
            )


def run_recipe(make_parser, main, argv: list[str] | None = None) -> None:
    """Parse and run; a `RecipeError` becomes one clear line on stderr and exit status 2."""
    use_all_cpu_cores()
    honour_fsdp_on_cpu()
    finished = False
    try:
        main(*parse_recipe(make_parser(), argv))
        finished = True
    except RecipeError as error:
        sys.stderr.write(f"error: {scrub(str(error))}\n")  # one write: processes' lines do not interleave
        sys.stderr.flush()
        sys.exit(2)
    finally:
        leave_process_group(together=finished)
