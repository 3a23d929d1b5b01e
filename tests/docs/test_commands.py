"""Every command the README and the docs show is one the tree can run.

The commands are the lines of the ```bash / ```sh / ```console blocks (a trailing `\\` joins the next line, `#`
starts a comment, `a && b` is two commands) and the inline code spans that start like a command
(`accelerate launch …`, `python recipes/…`, `python -m …`, `pip install …`). Each is checked against the tree by
its kind:

- `accelerate launch [--config_file F] recipes/X.py [--config C] [--key value ...]`: F exists and is a YAML mapping,
  every launcher option is one accelerate knows, recipes/X.py exists, C exists and is YAML, and every `--key` is a
  key of that script (read from the script's own `--help_all` or `--help`, once per script);
- `python recipes/X.py …`, `python data/X.py`: the same, without the launcher;
- `python -m benchmarks.X [--key value]`: benchmarks/X.py exists and parses `--key`;
- `pip install …`: each requirement is pinned as `requirements.txt` (or `.ci/run`) pins it, `-r` files exist,
  extras exist in pyproject.toml;
- `python3 -m pytest …`: the full suite is exactly the command `.ci/run` runs; a selection (`-m "not slow"`) is
  that command with the selection added, on registered markers;
- `python3 -m ruff …`, `python3 -m mkdocs …`: the tool is installed and the subcommand and options are known.

Synopses may hold placeholders: `<name>` matches any path (at least one must exist), `[…]` is optional and checked
as if given, `[… ...]` is a repetition and left out, and `…` alone is an elided value. A command of no known kind
fails, unless it is in ALLOWED with the reason it is shown.
"""

import ast
import functools
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from tests.docs.pages import REPO, fenced_blocks, inline_code, page_name, pages

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

CI_RUN = REPO / ".ci" / "run"
SHELL_LANGUAGES = {"bash", "sh", "shell", "console"}
INLINE_COMMANDS = (
    "accelerate launch ",
    "python recipes/",
    "python3 recipes/",
    "python data/",
    "python3 data/",
    "python -m ",
    "python3 -m ",
    "pip install ",
)
PYTHON = {"python", "python3"}
ELIDED = {"…", "..."}

# Commands the checks do not know how to check, by their first words, each with why it is shown. Keep it short:
# a command of a new kind should rather get a check above.
ALLOWED: dict[str, str] = {}


@dataclass(frozen=True)
class Command:
    page: str
    line: int
    text: str

    def __str__(self) -> str:
        return f"{self.page}:{self.line}: {self.text}"


# ---------------------------------------------------------------------------------------------------------------
# reading the commands


def shell_lines(body: str, console: bool = False) -> list[tuple[int, str]]:
    """(offset of the line in the block, the command line) for each command of a shell block: `\\`-continued lines
    joined, blank lines and comment lines skipped; in a console block only the `$ ` lines (the rest is output)."""
    found, pending, start = [], "", 0
    for offset, raw in enumerate(body.splitlines()):
        line = raw.strip()
        if not pending:
            start = offset
            if console:
                if not line.startswith("$ "):
                    continue
                line = line[2:]
            if not line or line.startswith("#"):
                continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        found.append((start, pending + line))
        pending = ""
    if pending:
        found.append((start, pending))
    return found


def split_commands(line: str) -> list[list[str]]:
    """The commands of one shell line as token lists: the trailing comment dropped, split at `&&` and `;`."""
    commands, current = [], []
    for token in shlex.split(line, comments=True):
        if token in ("&&", ";"):
            commands.append(current)
            current = []
        else:
            current.append(token)
    return [command for command in [*commands, current] if command]


def drop_optional_groups(tokens: list[str]) -> list[str]:
    """`[a b]` becomes `a b` (an option shown as optional is checked as if given); `[a ...]` is a repetition in a
    synopsis and is left out."""
    kept, group = [], None
    for token in tokens:
        if group is None and token.startswith("[") and not token.startswith("[["):
            group, token = [], token[1:]
        if group is None:
            kept.append(token)
            continue
        closing = token.endswith("]")
        token = token[:-1] if closing else token
        if token:
            group.append(token)
        if closing:
            if not group or group[-1] not in ELIDED:
                kept.extend(group)
            group = None
    return kept + (group or [])


def commands_of(path: Path) -> list[Command]:
    text, name = path.read_text(), page_name(path)
    found = []
    for first_line, language, body in fenced_blocks(text, SHELL_LANGUAGES):
        for offset, line in shell_lines(body, console=language == "console"):
            found.append(Command(name, first_line + offset, line))
    for line, code in inline_code(text):
        if code.startswith(INLINE_COMMANDS):
            found.append(Command(name, line, code))
    return found


def shown_commands() -> list[Command]:
    return [command for path in pages() for command in commands_of(path)]


COMMANDS = shown_commands()


# ---------------------------------------------------------------------------------------------------------------
# what the tree knows


def ci_test_command() -> list[str]:
    """The tokens of the one pytest command `.ci/run` runs."""
    lines = [line for line in CI_RUN.read_text().splitlines() if "pytest" in line and not line.lstrip().startswith("#")]
    assert len(lines) == 1, f".ci/run should run pytest once: {lines}"
    return shlex.split(lines[0], comments=True)


def ci_pip_requirements() -> list[str]:
    """The requirements `.ci/run` installs by name (beside `-r requirements.txt`)."""
    found = []
    for line in CI_RUN.read_text().splitlines():
        for tokens in split_commands(line) if "pip" in line and not line.lstrip().startswith("#") else []:
            if "install" in tokens:
                found += [t for t in tokens[tokens.index("install") + 1 :] if not t.startswith("-")]
    return [t for t in found if t != "requirements.txt"]


@functools.cache
def pinned_requirements() -> dict[str, set[str]]:
    """{canonical name: the specifiers it is installed with} from requirements.txt and .ci/run."""
    specs = []
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            specs.append(line)
    pins: dict[str, set[str]] = {}
    for spec in [*specs, *ci_pip_requirements()]:
        requirement = Requirement(spec)
        pins.setdefault(canonicalize_name(requirement.name), set()).add(str(requirement.specifier))
    return pins


@functools.cache
def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


@functools.cache
def registered_markers() -> set[str]:
    markers = pyproject()["tool"]["pytest"]["ini_options"]["markers"]
    return {marker.split(":", 1)[0].split("(", 1)[0].strip() for marker in markers}


@functools.cache
def accelerate_options() -> dict[str, bool]:
    """{option: whether it takes a value} of `accelerate launch`."""
    from accelerate.commands.launch import launch_command_parser

    parser = launch_command_parser()
    return {option: action.nargs != 0 for option, action in parser._option_string_actions.items()}


def benchmark_keys(path: Path) -> set[str]:
    """The fields of the dataclasses a benchmark hands HfArgumentParser: its command-line keys."""
    tree = ast.parse(path.read_text())
    parsed = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "HfArgumentParser" and node.args:
            argument = node.args[0]
            names = argument.elts if isinstance(argument, (ast.Tuple, ast.List)) else [argument]
            parsed |= {name.id for name in names if isinstance(name, ast.Name)}
    keys = set()
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name in parsed:
            keys |= {item.target.id for item in node.body if isinstance(item, ast.AnnAssign)}
    return keys


def script_flags(scripts: list[str]) -> dict[str, frozenset[str]]:
    """The `--keys` each script knows, from its own help: `--help_all` where its `--help` offers it (the recipes,
    whose `--help` shows the common keys only), else `--help`. `--config` (the YAML recipe file TrlParser reads)
    counts when the script says it takes one. The scripts' helps run side by side, each once."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }

    def run_helps(flag: str, names: list[str]) -> dict[str, str]:
        running = {
            name: subprocess.Popen(
                [sys.executable, str(REPO / name), flag],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for name in names
        }
        texts = {}
        for name, process in running.items():
            stdout, stderr = process.communicate(timeout=600)
            assert process.returncode == 0, f"{name} {flag} failed:\n{stdout[-2000:]}{stderr[-3000:]}"
            texts[name] = stdout
        return texts

    texts = run_helps("--help", scripts)
    for name, text in run_helps("--help_all", [name for name in scripts if "--help_all" in texts[name]]).items():
        texts[name] += text
    flags = {}
    for name, text in texts.items():
        found = set(re.findall(r"(?<![\w-])(--[A-Za-z][\w-]*)", text))
        if "--config" in (REPO / name).read_text():
            found.add("--config")
        flags[name] = frozenset(found)
    return flags


# ---------------------------------------------------------------------------------------------------------------
# the checks


def existing(token: str, what: str, problems: list[str]) -> Path | None:
    """The path `token` names, if it exists; a `<placeholder>` matches any name, `…` is an elided value."""
    if token in ELIDED or "…" in token:
        return None
    if "<" in token:
        pattern = re.sub(r"<[^>]*>", "*", token)
        if not sorted(REPO.glob(pattern)):
            problems.append(f"{what} {token!r} matches no file ({pattern})")
        return None
    path = REPO / token
    if not path.exists():
        problems.append(f"{what} {token!r} does not exist")
        return None
    return path


def yaml_file(token: str, what: str, problems: list[str]) -> None:
    path = existing(token, what, problems)
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            problems.append(f"{what} {token!r} is not valid YAML: {error}")
            return
        if not isinstance(loaded, dict):
            problems.append(f"{what} {token!r} is not a YAML mapping")


def flag_names(args: list[str]) -> list[str]:
    return [arg.split("=", 1)[0] for arg in args if arg.startswith("--")]


def check_script(script: str, args: list[str], flags_of, problems: list[str]) -> None:
    path = existing(script, "script", problems)
    if path is None:
        return
    if not script.startswith(("recipes/", "data/")):
        problems.append(f"{script!r} is not a recipe or a data script")
        return
    for index, arg in enumerate(args):
        if arg in ("--config", "--config_file") and index + 1 < len(args):
            yaml_file(args[index + 1], "recipe file", problems)
    if flags_of is not None and script.startswith("recipes/"):
        known = flags_of(script)
        unknown = sorted(set(flag_names(args)) - known)
        if unknown:
            problems.append(f"{script} does not know {unknown}")


def check_accelerate(args: list[str], flags_of, problems: list[str]) -> None:
    options = accelerate_options()
    index = 0
    while index < len(args) and not args[index].endswith(".py"):
        option = args[index].split("=", 1)[0]
        if option not in options:
            problems.append(f"accelerate launch has no option {option!r}")
        elif option in ("--config_file", "--config-file") and "=" not in args[index] and index + 1 < len(args):
            yaml_file(args[index + 1], "accelerate config", problems)
        index += 2 if options.get(option) and "=" not in args[index] else 1
    if index == len(args):
        problems.append("accelerate launch runs no script")
        return
    check_script(args[index], args[index + 1 :], flags_of, problems)


def check_pip(args: list[str], problems: list[str]) -> None:
    no_value = {"--no-deps", "-q", "--quiet", "-U", "--upgrade", "--no-build-isolation"}
    extras = set(pyproject()["project"].get("optional-dependencies", {}))
    index = 0
    while index < len(args):
        arg = args[index]
        if arg in ("-r", "--requirement", "-e", "--editable"):
            if index + 1 == len(args):
                problems.append(f"pip install {arg} without a value")
                return
            value = args[index + 1]
            if arg in ("-r", "--requirement"):
                existing(value, "requirements file", problems)
            else:
                check_local_project(value, extras, problems)
            index += 2
            continue
        if arg.startswith("-"):
            if arg not in no_value:
                problems.append(f"pip install option {arg!r} is not one these checks know")
        elif arg.startswith("."):
            check_local_project(arg, extras, problems)
        else:
            check_requirement(arg, problems)
        index += 1


def check_local_project(value: str, extras: set[str], problems: list[str]) -> None:
    match = re.fullmatch(r"\.(?:\[([\w,-]+)\])?", value)
    if not match:
        problems.append(f"pip installs {value!r}, not this project")
        return
    missing = sorted(set(filter(None, (match.group(1) or "").split(","))) - extras)
    if missing:
        problems.append(f"pyproject.toml has no extra {missing}")


def check_requirement(spec: str, problems: list[str]) -> None:
    try:
        requirement = Requirement(spec)
    except InvalidRequirement as error:
        problems.append(f"{spec!r} is not a requirement: {error}")
        return
    pins = pinned_requirements().get(canonicalize_name(requirement.name))
    if pins is None:
        problems.append(f"{requirement.name} is in neither requirements.txt nor .ci/run")
    elif requirement.specifier and str(requirement.specifier) not in pins:
        problems.append(f"{spec} does not match the pin {sorted(pins)} of requirements.txt / .ci/run")


def check_pytest(tokens: list[str], args: list[str], problems: list[str]) -> None:
    if importlib.util.find_spec("pytest") is None:
        problems.append("pytest is not installed")
    selected, kept, index = False, [], 0
    while index < len(args):
        if args[index] in ("-m", "-k") and index + 1 < len(args):
            selected = True
            if args[index] == "-m":
                words = set(re.findall(r"[A-Za-z_]\w*", args[index + 1])) - {"and", "or", "not"}
                unknown = sorted(words - registered_markers())
                if unknown:
                    problems.append(f"pytest markers {unknown} are not registered in pyproject.toml")
            index += 2
            continue
        if not args[index].startswith("-"):
            existing(args[index], "test path", problems)
        kept.append(args[index])
        index += 1
    if tokens[: len(tokens) - len(args)] + kept != ci_test_command():
        problems.append(
            f"the test command differs from the one .ci/run runs ({shlex.join(ci_test_command())})"
            + (" once the selection is taken out" if selected else "")
        )


def check_tool(module: str, args: list[str], problems: list[str]) -> None:
    known = {
        "ruff": {"check": {"--fix", "--diff", "--no-cache"}, "format": {"--check", "--diff", "--no-cache"}},
        "mkdocs": {"build": {"--strict", "--clean"}, "serve": {"--strict"}},
    }[module]
    if importlib.util.find_spec(module) is None:
        problems.append(f"{module} is not installed")
    if not args or args[0] not in known:
        problems.append(f"{module} {args[:1]} is not a subcommand these checks know ({sorted(known)})")
        return
    for arg in args[1:]:
        if arg.startswith("-"):
            if arg not in known[args[0]]:
                problems.append(f"{module} {args[0]} option {arg!r} is not one these checks know")
        else:
            existing(arg, "path", problems)
    if module == "mkdocs" and not (REPO / "mkdocs.yml").is_file():
        problems.append("there is no mkdocs.yml")


def check_benchmark(module: str, args: list[str], problems: list[str]) -> None:
    path = existing(module.replace(".", "/") + ".py", "benchmark", problems)
    if path is None:
        return
    keys = benchmark_keys(path)
    unknown = sorted(flag for flag in flag_names(args) if flag[2:].replace("-", "_") not in keys)
    if unknown:
        problems.append(f"{module} does not parse {unknown} (its keys: {sorted(keys)})")


def allowed(tokens: list[str]) -> bool:
    words = " ".join(tokens)
    return any(words == prefix or words.startswith(prefix + " ") for prefix in ALLOWED)


def check(text: str, flags_of=None) -> list[str]:
    """What is wrong with one shown command line; `flags_of(script)` gives a recipe's known flags (None: the flags
    are not checked)."""
    try:
        commands = split_commands(text)
    except ValueError as error:
        return [f"cannot be read as a shell command: {error}"]
    problems: list[str] = []
    for tokens in commands:
        tokens = drop_optional_groups(tokens)
        env = 0
        while env < len(tokens) and re.match(r"[A-Za-z_][A-Za-z0-9_]*=", tokens[env]):
            env += 1
        word = tokens[env:]
        if allowed(word):
            continue
        if word[:2] == ["pip", "install"]:
            check_pip(word[2:], problems)
        elif word[:2] == ["accelerate", "launch"]:
            check_accelerate(word[2:], flags_of, problems)
        elif len(word) >= 2 and word[0] in PYTHON and word[1].endswith(".py"):
            check_script(word[1], word[2:], flags_of, problems)
        elif len(word) >= 3 and word[0] in PYTHON and word[1] == "-m":
            module, args = word[2], word[3:]
            if module.startswith("benchmarks."):
                check_benchmark(module, args, problems)
            elif module == "pytest":
                check_pytest(tokens, args, problems)
            elif module in ("ruff", "mkdocs"):
                check_tool(module, args, problems)
            elif module == "pip" and args[:1] == ["install"]:
                check_pip(args[1:], problems)
            else:
                problems.append(f"no check knows the module {module!r}; add one, or add it to ALLOWED with a reason")
        else:
            problems.append(f"no check knows {shlex.join(word[:2])!r}; add one, or add it to ALLOWED with a reason")
    return problems


# ---------------------------------------------------------------------------------------------------------------
# the tests


def recipe_scripts(command: Command) -> list[str]:
    return sorted(set(re.findall(r"recipes/\w+\.py", command.text)))


def runs_a_recipe(command: Command) -> bool:
    return bool(recipe_scripts(command))


@pytest.fixture(scope="module")
def flags_of():
    """A recipe's known flags: every script the shown commands run, its help run once for the whole module."""
    flags = script_flags(sorted({script for command in COMMANDS for script in recipe_scripts(command)}))
    return flags.__getitem__


def test_the_pages_show_commands():
    texts = [command.text for command in COMMANDS]
    assert any(text.startswith("accelerate launch recipes/sft.py") or "&& accelerate launch" in text for text in texts)
    assert any("pytest" in text for text in texts)
    assert len(ALLOWED) <= 5, "keep the allow-list short: give a new kind of command its own check"


@pytest.mark.parametrize("command", COMMANDS, ids=str)
def test_each_command_names_what_exists(command):
    """Scripts, configs, files, modules, tools and pins (not yet the recipes' keys: the slow test below)."""
    problems = check(command.text)
    assert not problems, f"{command}\n  " + "\n  ".join(problems)


@pytest.mark.slow  # runs each recipe's --help (once per script)
@pytest.mark.parametrize("command", [c for c in COMMANDS if runs_a_recipe(c)], ids=str)
def test_each_recipe_command_uses_keys_its_script_knows(command, flags_of):
    problems = check(command.text, flags_of)
    assert not problems, f"{command}\n  " + "\n  ".join(problems)


def test_the_readme_test_command_is_the_one_ci_runs():
    readme = [command for command in COMMANDS if command.page == "README.md" and "pytest" in command.text]
    assert readme, "the README shows no test command"
    assert any(tokens == ci_test_command() for c in readme for tokens in split_commands(c.text))


def test_shell_lines_are_read_as_a_shell_reads_them():
    body = (
        "# a comment line\n"
        "accelerate launch recipes/sft.py \\\n"
        "  --config recipes/configs/smollm2/sft_givens.yaml   # trailing comment && more\n"
        "\n"
        "pip install -r requirements.txt && python -m benchmarks.layer_benchmark\n"
    )
    lines = shell_lines(body)
    assert [offset for offset, _ in lines] == [1, 4]
    assert split_commands(lines[0][1]) == [
        ["accelerate", "launch", "recipes/sft.py", "--config", "recipes/configs/smollm2/sft_givens.yaml"]
    ]
    assert split_commands(lines[1][1]) == [
        ["pip", "install", "-r", "requirements.txt"],
        ["python", "-m", "benchmarks.layer_benchmark"],
    ]
    assert shell_lines("$ python data/make_demo_data.py\nwrote 2 files\n", console=True) == [
        (0, "python data/make_demo_data.py")
    ]
    assert drop_optional_groups(["a", "[--x", "1]", "[--key", "value", "...]", "b"]) == ["a", "--x", "1", "b"]


def test_the_checks_catch_what_is_wrong():
    def known(script):
        return {"--config", "--learning_rate"}

    good = (
        "accelerate launch [--config_file accelerate_configs/<setup>.yaml] recipes/sft.py"
        " --config recipes/configs/<model>/<stage>_<method>.yaml [--key value ...]"
    )
    assert check(good, known) == []
    assert (
        check(
            "accelerate launch recipes/sft.py --config recipes/configs/smollm2/sft_givens.yaml --learning_rate 1e-4",
            known,
        )
        == []
    )
    cases = {
        "accelerate launch recipes/nope.py": "does not exist",
        "accelerate launch --config_file accelerate_configs/nope.yaml recipes/sft.py": "does not exist",
        "accelerate launch --no_such_launcher_option recipes/sft.py": "has no option",
        "accelerate launch recipes/sft.py --config recipes/configs/smollm2/nope.yaml": "does not exist",
        "accelerate launch recipes/sft.py --learning_rat 1e-4": "does not know ['--learning_rat']",
        "python -m benchmarks.nope": "does not exist",
        "python -m benchmarks.layer_benchmark --no_such_key 1": "does not parse ['--no_such_key']",
        "pip install torch==0.0.1": "does not match the pin",
        "pip install not-a-requirement-of-goft": "neither requirements.txt nor .ci/run",
        "pip install -r no-such-requirements.txt": "does not exist",
        "pip install -e .[no_such_extra]": "has no extra",
        "HF_HUB_OFFLINE=1 python3 -m pytest tests": "differs from the one .ci/run runs",
        'HF_HUB_OFFLINE=1 python3 -m pytest -q -m "not no_such_marker" tests': "not registered",
        "python3 -m ruff lint .": "not a subcommand",
        "make docs": "no check knows 'make docs'",
        "python -m some_tool": "no check knows the module",
    }
    for text, expected in cases.items():
        problems = check(text, known)
        assert any(expected in problem for problem in problems), (text, problems)


def test_an_allowed_command_passes_with_its_reason(monkeypatch):
    monkeypatch.setitem(ALLOWED, "make docs", "an example: a command these checks do not know")
    assert check("make docs") == [] and check("make docs html") == []
    assert check("make doc") != []
