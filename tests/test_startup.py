"""Jobs that use no model start without torch: the paper grid runs about a thousand of them (samples, bag-of-words,
probes, the report's jobs), and torch's import costs each about as much as the rest of its start."""
import ast
import json
import subprocess
import sys

from conftest import FIXTURES, REPO, clean_env, fixture_config, write_config

# The verbs whose jobs load no model. A probe job imports torch only to train its MLP probe.
WITHOUT_MODEL = ["sample", "bow", "probe", "aggregate", "runtimes", "resolved-config", "check-skips",
                 "validate-config"]


def verb_imports(verb: str) -> list[str]:
    """The modules the verb's function in commands.py imports when it runs (each verb imports what it needs there)."""
    tree = ast.parse((REPO / "workflow/lmadapt/commands.py").read_text())
    function = next(node for node in tree.body
                    if isinstance(node, ast.FunctionDef) and node.name == f"cmd_{verb.replace('-', '_')}")
    modules = []
    for node in ast.walk(function):
        if isinstance(node, ast.ImportFrom):
            modules.append(f"lmadapt.{node.module}" if node.level else node.module)
        elif isinstance(node, ast.Import):
            modules += [alias.name for alias in node.names]
    return modules


def loaded_after(code: str) -> set[str]:
    """The top-level packages a fresh interpreter has imported after running `code`."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=clean_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    return set(json.loads(proc.stdout.strip().splitlines()[-1]))


def test_importing_the_cli_and_each_verb_without_a_model_loads_no_torch():
    assert "torch" not in loaded_after("import lmadapt.cli")
    for verb in WITHOUT_MODEL:
        modules = verb_imports(verb)
        imports = "".join(f"import {module}\n" for module in modules)
        loaded = loaded_after(f"import lmadapt.cli\n{imports}")
        assert "torch" not in loaded and "transformers" not in loaded, (verb, modules)
    assert "torch" in loaded_after("import lmadapt.cli\n" + "".join(
        f"import {module}\n" for module in verb_imports("extract")))  # the check can tell


def test_sample_and_validate_config_run_without_torch(tmp_path):
    config = write_config(tmp_path / "config.yaml", fixture_config())
    task = json.dumps(fixture_config()["tasks"]["tweets"])
    loaded = loaded_after(f"""
from lmadapt.cli import main
main(["validate-config", {str(config)!r}])
main(["sample", "--task", "tweets", "--task-config", {task!r}, "--split", "train", "--k", "1", "--seed", "1",
      "--input", "train={FIXTURES / 'tweet_sentiment/train.jsonl'}", "--out", {str(tmp_path / 's.parquet')!r}])
""")
    assert "torch" not in loaded and (tmp_path / "s.parquet").exists()
