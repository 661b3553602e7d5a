"""Every hook is documented in the plugin guide and exercised by a test."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from adaptrix.plugins import hookspecs

REPO = Path(__file__).resolve().parents[1]
GUIDE = (REPO / "docs" / "writing-a-plugin.md").read_text()
HOOKS = sorted(n for n in dir(hookspecs) if hasattr(getattr(hookspecs, n), "adaptrix_spec"))


def test_there_are_hooks():
    assert {"detect_family", "load_model", "default_generation_config", "target_modules", "families"} <= set(HOOKS)


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_documented_in_the_guide_with_its_arguments(hook):
    params = list(inspect.signature(getattr(hookspecs, hook)).parameters)
    heading = re.search(rf"^### `{hook}\(([^)]*)\)", GUIDE, re.M)
    assert heading, f"docs/writing-a-plugin.md has no '### `{hook}(...)`' section"
    assert [p.strip() for p in heading.group(1).split(",") if p.strip()] == params


@pytest.mark.parametrize("hook", HOOKS)
def test_hookspec_has_docstring_and_types(hook):
    fn = getattr(hookspecs, hook)
    assert fn.__doc__ and "Return" in fn.__doc__
    assert "return" in fn.__annotations__


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_exercised_by_a_test(hook):
    uses = [
        p.name
        for p in (REPO / "tests").glob("test_*.py")
        if p.name != "test_docs.py" and re.search(rf"""((call_first|call_family|call_all)\(\s*["']{hook}["']|\.hook\.{hook}\()""", p.read_text())
    ]
    assert uses, f"no test calls hook {hook!r} through the plugin host"


def test_guide_leads_with_the_minimal_plugin():
    """The first plugin a reader sees is the smallest one that works (tests/test_third_party_plugin.py runs it)."""
    first_section = re.search(r"^## (.+)$", GUIDE, re.M).group(1)
    assert first_section == "The smallest plugin"
    code = GUIDE.split("```python\n", 1)[1].split("```", 1)[0]
    defined = re.findall(r"^def (\w+)\(([^)]*)\)", code, re.M)
    assert [name for name, _ in defined] == ["detect_family", "target_modules"]
    assert all(args == "config" for _, args in defined)  # a subset of the spec's arguments
    assert code.count("@hookimpl") == 2


def test_relative_module_references_in_docstrings_name_modules_that_exist():
    """A ``:mod:`.name``` in a package's docs points at a module of that package (one a reader can open)."""
    missing = []
    for source in sorted([*(REPO / "core").rglob("*.py"), *(REPO / "plugins").rglob("*.py")]):
        package = source.parent
        for ref in re.findall(r":mod:`(\.+[\w.]+)`", source.read_text()):
            dots = len(ref) - len(ref.lstrip("."))
            base = package.parents[dots - 2] if dots > 1 else package
            target = base.joinpath(*ref.lstrip(".").split("."))
            if not (target.with_suffix(".py").is_file() or (target / "__init__.py").is_file()):
                missing.append(f"{source.relative_to(REPO)}: {ref}")
    assert not missing, "\n".join(missing)
