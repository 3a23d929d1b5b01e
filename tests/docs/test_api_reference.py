"""The API reference (docs/api.md) covers goft's public names, and every one of them has a docstring.

A public name is one in the `__all__` of a public package: `goft` (what `import goft` gives: the tuners and the
measures) and `goft.training.trainers` (the named trainers, which need TRL). docs/api.md lists each as
`::: <package>.<name>` and nothing else, so the pages never name the modules behind them. Each such class or function
has its own docstring, and so does every public method a listed class defines itself (methods inherited from peft,
TRL or torch are theirs to document). A constant is documented by a docstring under its assignment, as mkdocstrings
reads it.
"""

import ast
import importlib
import inspect
import re
import textwrap

import griffe
import pytest

from tests.docs.pages import DOCS, REPO

API = DOCS / "api.md"
PUBLIC_PACKAGES = ("goft", "goft.training.trainers")


def api_names() -> list[tuple[str, str]]:
    """(package, name) of each `:::` entry of docs/api.md, in order."""
    lines = [line.strip() for line in API.read_text().splitlines() if line.strip().startswith(":::")]
    names = []
    for line in lines:
        match = re.fullmatch(r"::: ([\w.]+)\.([A-Za-z_]\w*)", line)
        assert match and match.group(1) in PUBLIC_PACKAGES, (
            f"docs/api.md: {line!r} is not `::: <package>.<name>` for a package of {PUBLIC_PACKAGES}"
        )
        names.append((match.group(1), match.group(2)))
    return names


def public_names() -> list[tuple[str, str]]:
    return [(package, name) for package in PUBLIC_PACKAGES for name in importlib.import_module(package).__all__]


def resolve(package: str, name: str):
    return getattr(importlib.import_module(package), name)


def own_docstring(obj) -> str:
    """The docstring `obj` carries itself: for a class, the one in its body (a dataclass without one gets its
    signature as __doc__, and a subclass would otherwise show its base's)."""
    if inspect.isclass(obj):
        try:
            source = inspect.getsource(obj)
        except (OSError, TypeError):
            return obj.__dict__.get("__doc__") or ""
        node = ast.parse(textwrap.dedent(source)).body[0]
        return ast.get_docstring(node) or ""
    return getattr(obj, "__doc__", None) or ""


def own_public_methods(cls) -> dict[str, object]:
    """{name: function} of the public methods and properties `cls` defines in its own body."""
    methods = {}
    for name, member in vars(cls).items():
        if name.startswith("_"):
            continue
        function = member.fget if isinstance(member, property) else getattr(member, "__func__", member)
        if inspect.isfunction(function):
            methods[name] = function
    return methods


@pytest.fixture(scope="module")
def static_goft():
    """goft as mkdocstrings sees it (read from the source, not imported): for the constants' docstrings."""
    return griffe.load("goft", search_paths=[str(REPO)], resolve_aliases=True, resolve_external=False)


def test_every_public_name_is_in_the_api_reference():
    listed = api_names()
    missing = sorted(set(public_names()) - set(listed))
    assert not missing, f"public names missing from docs/api.md (add `::: <package>.<name>`): {missing}"
    assert len(listed) == len(set(listed)), "docs/api.md lists a name twice"


def test_the_api_reference_lists_only_public_names():
    extra = sorted(set(api_names()) - set(public_names()))
    assert not extra, f"docs/api.md lists names that are in no public package's __all__: {extra}"


@pytest.mark.parametrize("entry", sorted(set(public_names()) | set(api_names())), ids=".".join)
def test_each_public_name_has_a_docstring(entry, static_goft):
    package, name = entry
    obj = resolve(package, name)
    if inspect.isclass(obj) or inspect.isroutine(obj):
        assert own_docstring(obj).strip(), f"{package}.{name} has no docstring"
    else:
        assert package == "goft", f"{package}.{name}: only goft's own constants are read statically"
        docstring = static_goft[name].docstring
        assert docstring is not None and docstring.value.strip(), (
            f"goft.{name} ({type(obj).__name__}) has no docstring: write one as a string right under its assignment"
        )


@pytest.mark.parametrize(
    "entry", sorted(entry for entry in api_names() if inspect.isclass(resolve(*entry))), ids=".".join
)
def test_each_public_method_of_a_listed_class_has_a_docstring(entry):
    cls = resolve(*entry)
    undocumented = sorted(
        method for method, function in own_public_methods(cls).items() if not (function.__doc__ or "").strip()
    )
    assert not undocumented, f"{'.'.join(entry)} defines public methods without a docstring: {undocumented}"


def test_own_docstrings_are_told_from_inherited_ones():
    class Base:
        """Base."""

        def documented(self):
            """Says what it does."""

    class Child(Base):
        def documented(self):
            pass

        @property
        def size(self):
            return 1

        def _private(self):
            pass

    assert own_docstring(Base) == "Base." and own_docstring(Child) == ""
    assert set(own_public_methods(Child)) == {"documented", "size"}
    assert not own_public_methods(Child)["documented"].__doc__
