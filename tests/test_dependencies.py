"""Honest dependency bounds: src/ reaches into no private torch internals except behind a tested fallback, and the
declared minimum torch is the one CI installs and runs the whole suite on."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "dssbt"

# Private torch internals src/ may use, each behind a fallback that a test runs:
#   eager.py: torch.optim's decorated functions are unwrapped (``__wrapped__``) and recognised by their code objects
#   (``__code__.co_qualname``); where torch's wrappers or AdamW's step look different, nothing is unwrapped and
#   torch's public path runs (tests/test_eager.py: ``step_path`` runs the public step; the unwrapping is checked by
#   test_a_training_process_never_imports_torch_dynamo).
ALLOWED = {"eager.py": {"__wrapped__", "__code__", "co_qualname", "__dynamo_disable"}}
INTROSPECTION = {"__wrapped__", "__code__", "co_qualname", "__dynamo_disable", "__closure__", "__globals__"}


def private_uses(tree: ast.AST) -> set[str]:
    """Names of private torch internals a module's syntax tree reaches: torch._x attributes and modules, and the
    introspection of (torch's) functions."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            chain, base = [node.attr], node.value
            while isinstance(base, ast.Attribute):
                chain.append(base.attr)
                base = base.value
            if isinstance(base, ast.Name) and base.id in ("torch", "F", "nn"):
                found |= {a for a in chain if a.startswith("_") and not (a.startswith("__") and a.endswith("__"))}
            if node.attr in INTROSPECTION:
                found.add(node.attr)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("torch"):
            found |= {p for p in node.module.split(".") if p.startswith("_")}
            found |= {a.name for a in node.names if a.name.startswith("_")}
        elif isinstance(node, ast.Import):
            found |= {
                p for a in node.names if a.name.startswith("torch") for p in a.name.split(".") if p.startswith("_")
            }
    return found


def test_the_scanner_finds_private_uses():
    code = """
import torch._dynamo
from torch._C import _foo
from torch.optim import Adam
x = torch._C._get_tracing_state()
y = Adam.step.__wrapped__
z = torch.nn.functional.relu
v = torch.__version__
"""
    assert private_uses(ast.parse(code)) == {"_dynamo", "_C", "_foo", "_get_tracing_state", "__wrapped__"}


def test_src_uses_no_private_torch_internals_beyond_the_allowed_ones():
    unexpected = {}
    for path in sorted(SRC.rglob("*.py")):
        uses = private_uses(ast.parse(path.read_text(), filename=str(path))) - ALLOWED.get(path.name, set())
        if uses:
            unexpected[str(path.relative_to(ROOT))] = sorted(uses)
    assert not unexpected, f"private torch internals without a tested fallback: {unexpected}"


def test_declared_minimum_torch_is_the_one_ci_runs():
    """pyproject's lower bound of torch is the version .ci/run installs: the whole suite runs on the minimum."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    declared = re.search(r'"torch>=([0-9.]+)"', pyproject)
    pinned = re.search(r"pip install --quiet torch==([0-9.]+)", ci)
    assert declared and pinned, "pyproject.toml declares torch>=X and .ci/run installs torch==X"
    assert declared.group(1) == pinned.group(1), (declared.group(1), pinned.group(1))
