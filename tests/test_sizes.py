"""Sizes a reader can hold: no function over 60 lines and no module over 450 in the package, a short common.smk
and README (issue "the house, round 3", item 6)."""
import ast

from conftest import REPO

PACKAGE = REPO / "workflow/lmadapt"


def test_no_function_over_60_lines_and_no_module_over_450():
    long_functions, long_modules = [], []
    for path in sorted(PACKAGE.glob("*.py")):
        text = path.read_text()
        if len(text.splitlines()) > 450:
            long_modules.append(f"{path.name}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                long_functions.append(f"{path.name}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1}")
    assert long_functions == [] and long_modules == []


def test_common_smk_and_the_readme_stay_short():
    assert len((REPO / "workflow/rules/common.smk").read_text().splitlines()) < 250
    assert len((REPO / "README.md").read_text().splitlines()) <= 200
