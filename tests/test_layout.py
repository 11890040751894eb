"""The tests mirror the source tree: every module of bot/ and inference/ with logic has its own test module.

`bot/jobs/service.py` is tested in `tests/bot/jobs/test_service.py`; a package's `__init__.py` with logic in
`test_<package>.py` beside its modules' tests. A module with no function in it (declarations, re-exports,
a docstring) needs none. Test modules named after a feature rather than a module (tests/e2e, ...) are welcome
beside the mirrors; they don't stand in for one.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("bot", "inference")

# Modules with logic that have no mirror test module, each with why. Keep it short: a new module gets tests.
ALLOWED_WITHOUT_MIRROR: dict[str, str] = {}


def mirror_of(module: Path) -> Path:
    """The test module that mirrors `module` (a path relative to the repository root)."""
    if module.name == "__init__.py":
        return Path("tests") / module.parent / f"test_{module.parent.name}.py"
    return Path("tests") / module.parent / f"test_{module.name}"


def has_logic(module: Path) -> bool:
    """Whether the module defines a function or method (anything else is declarations)."""
    tree = ast.parse((ROOT / module).read_text(encoding="utf-8"))
    return any(isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) for node in ast.walk(tree))


def source_modules() -> list[Path]:
    return sorted(path.relative_to(ROOT) for source in SOURCES for path in (ROOT / source).rglob("*.py"))


def test_every_source_module_with_logic_has_a_mirror_test_module() -> None:
    missing = [
        f"{module} -> {mirror_of(module)}"
        for module in source_modules()
        if has_logic(module) and str(module) not in ALLOWED_WITHOUT_MIRROR and not (ROOT / mirror_of(module)).is_file()
    ]
    assert missing == [], "write these test modules (or, with a reason, allow-list the module): " + ", ".join(missing)


def test_the_allow_list_names_only_modules_that_still_need_it() -> None:
    modules = {str(module): module for module in source_modules()}
    stale = [
        name
        for name in ALLOWED_WITHOUT_MIRROR
        if name not in modules or not has_logic(modules[name]) or (ROOT / mirror_of(modules[name])).is_file()
    ]
    assert stale == [], "remove these from ALLOWED_WITHOUT_MIRROR: " + ", ".join(stale)


def test_the_mirror_rule_names_the_test_module_and_sees_logic() -> None:
    assert mirror_of(Path("bot/jobs/service.py")) == Path("tests/bot/jobs/test_service.py")
    assert mirror_of(Path("inference/families/__init__.py")) == Path("tests/inference/families/test_families.py")
    assert has_logic(Path("bot/jobs/service.py")) and not has_logic(Path("bot/jobs/__init__.py"))
