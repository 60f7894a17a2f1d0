"""The package layout's rules, checked on the source: imports run downwards only."""

from __future__ import annotations

import ast

import pytest

from tests.helpers import REPO

WINGS = ("trainer.evaluation", "trainer.ablation")


def imports(path) -> set[str]:
    """Every module a file imports (top level or inside functions)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
    return out


def files(package: str):
    return sorted((REPO / package.replace(".", "/")).rglob("*.py"))


@pytest.mark.parametrize("package", ["dataset", "model"])
def test_data_and_model_never_import_trainer(package):
    for f in files(package):
        bad = sorted(m for m in imports(f) if m == "trainer" or m.startswith("trainer."))
        assert not bad, f"{f.relative_to(REPO)} imports {bad}"


def test_model_never_imports_dataset():
    for f in files("model"):
        bad = sorted(m for m in imports(f) if m.split(".")[0] == "dataset")
        assert not bad, f"{f.relative_to(REPO)} imports {bad}"


def test_the_core_never_imports_a_wing():
    core = [f for f in files("trainer") if f.parent == REPO / "trainer"]
    assert len(core) > 8
    for f in core:
        bad = sorted(m for m in imports(f) if m.startswith(WINGS))
        assert not bad, f"{f.relative_to(REPO)} imports {bad}"


def test_nothing_imports_an_entry_script():
    scripts = {"trainer.train_pretrain", "trainer.train_midtrain"}
    for f in files("trainer") + files("dataset") + files("model"):
        bad = sorted(imports(f) & scripts)
        assert not bad, f"{f.relative_to(REPO)} imports {bad}"
