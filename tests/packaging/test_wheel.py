"""goft built as a wheel and installed (not editable) into a fresh virtual environment that sees the installed stack
(torch, transformers, trl…): the wheel ships every module and the evaluation sets, every module imports from another
working directory, `import goft` registers its methods with peft, and the metadata carries pyproject's dependencies."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.support.project import PACKAGE, PROJECT, REPO

pytestmark = pytest.mark.slow

# What the build reads: a copy of these builds the wheel away from the working tree (no build/ or egg-info there,
# and no stale build/lib from an earlier layout of the package).
BUILD_INPUTS = ["pyproject.toml", "README.md", "goft", "LICEN[CS]E*"]
EVALUATION_SETS = ["GENERAL_TEXT", "RETENTION_QUESTIONS", "OPEN_INSTRUCTIONS", "REPLAY_PROMPTS", "REPLAY_QUESTIONS"]

# Run by the virtual environment's Python: imports every module of the installed package, found from its files.
PROBE = """
import importlib, importlib.util, json, sys, traceback
from pathlib import Path

import goft
from peft import PeftType
from goft.evaluation import assets

root = Path(goft.__file__).parent
names = sorted(
    ".".join(("goft", *path.relative_to(root).with_suffix("").parts)).removesuffix(".__init__")
    for path in root.rglob("*.py")
)
failed, skipped = {}, []
for name in names:
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name == "triton" and importlib.util.find_spec("triton") is None:
            skipped.append(name)
        else:
            failed[name] = traceback.format_exc(limit=-3)
    except Exception:
        failed[name] = traceback.format_exc(limit=-3)
print(json.dumps({
    "root": str(root),
    "modules": names,
    "failed": failed,
    "skipped": skipped,
    "files": {n: getattr(m, "__file__", None) for n, m in list(sys.modules.items()) if n.split(".")[0] == "goft"},
    "peft_types": sorted(PeftType.__members__),
    "sets": {name: str(getattr(assets, name)) for name in %r},
}))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheel")
    for path in (path for pattern in BUILD_INPUTS for path in REPO.glob(pattern)):
        if path.is_dir():
            shutil.copytree(path, source / path.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, source / path.name)
    command = [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(source)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"building the wheel failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
    (built,) = out.glob("goft-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> dict:
    """The probe's findings, run in a fresh venv (the system's packages visible) holding the wheel."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index"]
    result = subprocess.run([*install, str(wheel)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"installing the wheel failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1"}
    elsewhere = tmp_path_factory.mktemp("elsewhere")  # not the repository: its goft/ must not be importable
    probe = [str(python), "-c", PROBE % EVALUATION_SETS]
    result = subprocess.run(probe, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"the installed package does not import:\n{result.stderr[-4000:]}"
    found = json.loads(result.stdout.strip().splitlines()[-1])
    found["venv"] = venv
    return found


def source_modules() -> set[str]:
    return {
        ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        for path in PACKAGE.rglob("*.py")
    }


def test_the_wheel_ships_every_module_and_the_evaluation_sets(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {name.removesuffix(".py").replace("/", ".").removesuffix(".__init__") for name in names}
    assert not source_modules() - shipped, f"modules missing from the wheel: {sorted(source_modules() - shipped)}"
    data = {f"goft/evaluation/data/{path.name}" for path in (PACKAGE / "evaluation" / "data").glob("*.jsonl")}
    assert data and not data - set(names), f"evaluation sets missing from the wheel: {sorted(data - set(names))}"


def test_the_wheel_metadata_carries_the_dependencies_and_extras(wheel):
    archive = zipfile.ZipFile(wheel)
    (path,) = [name for name in archive.namelist() if name.endswith(".dist-info/METADATA")]
    metadata = Parser().parsestr(archive.read(path).decode())
    requires = {str(Requirement(line)) for line in metadata.get_all("Requires-Dist", [])}
    extras = PROJECT["optional-dependencies"]
    assert set(metadata.get_all("Provides-Extra", [])) == set(extras) and "recipes" in extras
    expected = {str(Requirement(spec)) for spec in PROJECT["dependencies"]}
    for extra, specs in extras.items():
        for spec in specs:
            requirement = Requirement(spec)
            marker = f"({requirement.marker}) and " if requirement.marker else ""
            requirement.marker = None
            expected.add(str(Requirement(f'{requirement}; {marker}extra == "{extra}"')))
    assert requires == expected, f"missing: {sorted(expected - requires)}; unexpected: {sorted(requires - expected)}"


def test_every_module_imports_from_the_installed_wheel(installed):
    root = Path(installed["root"])
    assert root.is_relative_to(installed["venv"]), f"goft came from {root}, not from the wheel"
    assert set(installed["modules"]) >= source_modules(), sorted(source_modules() - set(installed["modules"]))
    assert not installed["failed"], "modules that do not import from the wheel:\n" + "\n".join(
        f"--- {name}\n{error}" for name, error in installed["failed"].items()
    )
    files = {name: file for name, file in installed["files"].items() if file}
    outside = {name: file for name, file in files.items() if not Path(file).is_relative_to(root)}
    assert not outside, f"modules loaded from outside the installed package: {outside}"


def test_importing_goft_registers_its_methods_and_finds_its_evaluation_sets(installed):
    assert {"GIVENS", "SORSA"} <= set(installed["peft_types"])
    for name, file in installed["sets"].items():
        path = Path(file)
        assert path.is_file() and path.is_relative_to(installed["root"]), f"assets.{name}: {path}"
