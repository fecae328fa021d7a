"""docs/design.md draws the package's layers as they are: its table lists the layers of .importlinter (the contract
`make lint` checks) in order, and each module with exactly the package modules it imports, inside functions too."""
import ast
import configparser
import re

from conftest import REPO

PACKAGE = REPO / "workflow/lmadapt"


def package_imports(module: str) -> set[str]:
    """The lmadapt modules a module imports, as lint-imports reads them: every import statement, at any depth."""
    found = set()
    for node in ast.walk(ast.parse((PACKAGE / f"{module}.py").read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found |= {node.module.split(".")[0]} if node.module else {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lmadapt."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {alias.name.split(".")[1] for alias in node.names if alias.name.startswith("lmadapt.")}
    return found - {"__version__"}  # the package's own __init__, not a module of a layer


def contract_layers() -> list[list[str]]:
    parser = configparser.ConfigParser()
    parser.read(REPO / ".importlinter")
    lines = parser["importlinter:contract:layers"]["layers"].strip().splitlines()
    return [[name.strip() for name in re.split(r"[|:]", line)] for line in lines]


def design_table() -> list[tuple[str, str, set[str]]]:
    """(layer, module, imports) of each row of the design page's layers table."""
    text = (REPO / "docs/design.md").read_text()
    rows = []
    for line in text[text.index("| layer | module |"):].splitlines()[2:]:
        if not line.startswith("|"):
            break
        layer, module, _, imported = (cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1])
        rows.append((layer.split()[0], module.strip("`"), set() if imported == "—" else set(imported.split(", "))))
    return rows


def test_the_design_page_draws_the_contract_layers_and_every_module_with_what_it_imports():
    modules = sorted(path.stem for path in PACKAGE.glob("*.py") if path.stem != "__init__")
    rows = design_table()
    assert sorted(module for _, module, _ in rows) == modules  # one line per module
    layers = contract_layers()
    assert [module for _, module, _ in rows] == [module for layer in layers for module in layer]  # their order
    layer_of = {module: i for i, layer in enumerate(layers) for module in layer}
    for layer, module, imported in rows:
        assert imported == package_imports(module), module
        assert {layer_of[other] for other in imported} <= set(range(layer_of[module], len(layers))), module
