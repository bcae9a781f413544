"""The layout of the project: which file may import which (lower files never import higher ones),
the network apart from the tokenizer, one definition of IGNORE_INDEX, every file in pyproject.toml."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FOUNDATION = ["model", "generate", "gpt2", "tokenizer", "data", "formats", "tasks", "common", "evaluate",
              "preferences"]
STAGES = ["pretrain", "sft", "reward", "rollout", "ppo", "dpo", "judge", "rlaif"]
TOP = ["report", "pipeline", "chat", "bench"]


def project_imports(name):
    """The project modules that <name>.py imports, anywhere in the file."""
    tree = ast.parse((ROOT / f"{name}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module.split(".")[0])
    return found & set(FOUNDATION + STAGES + TOP)


def test_every_top_level_file_has_a_tier():
    assert {p.stem for p in ROOT.glob("*.py")} == set(FOUNDATION + STAGES + TOP)


def test_lower_files_never_import_higher_ones():
    assert project_imports("model") == set()  # the network knows no tokenizer, no data
    for name in FOUNDATION:
        assert not project_imports(name) & set(STAGES + TOP), name
    for name in STAGES:
        assert not project_imports(name) & set(TOP), name
    assert "reward" not in project_imports("dpo")  # DPO reads the preference files, not the reward stage


def test_ignore_index_is_defined_once():
    defined = [p.name for p in ROOT.glob("*.py")
               if any(isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "IGNORE_INDEX" for t in node.targets)
                      for node in ast.parse(p.read_text()).body)]
    assert defined == ["model.py"]


def test_pyproject_installs_every_module():
    text = (ROOT / "pyproject.toml").read_text()
    modules = ast.literal_eval(text.split("py-modules = ", 1)[1].split("\n", 1)[0])
    assert set(modules) == set(FOUNDATION + STAGES + TOP)
