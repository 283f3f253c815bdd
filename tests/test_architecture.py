"""The package's shape: no import cycles, modules import only from lower layers, light commands stay light.

The layers (README "Layout"), lowest first; a module may import from its own layer or lower ones,
counting imports inside functions too (a lazy import is still a dependency):

    0  errors, quiet
    1  config, compose, redaction
    2  data, context, embeddings
    3  layers, fast_lstm, architectures, models, optim, tracking.store, tracking.registry, offline, tracking.session
    4  tracking.callback, profiling, reports, serving, checkpoints, evaluation, server
    5  recording, training, distribute, crossval, summary
    6  pipeline, sweep, compare, bench, runs
    7  cli, __main__
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "bilstm_exp"

LAYERS = [
    {"errors", "quiet"},
    {"config", "compose", "redaction"},
    {"data", "context", "embeddings"},
    {"layers", "fast_lstm", "architectures", "models", "optim", "tracking", "tracking.store", "tracking.registry",
     "offline", "tracking.session"},
    {"tracking.callback", "profiling", "reports", "serving", "checkpoints", "evaluation", "server"},
    {"recording", "training", "distribute", "crossval", "summary"},
    {"pipeline", "sweep", "compare", "bench", "runs"},
    {"cli", "__main__"},
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts) or "__init__"


def layer_of(name: str) -> int:
    """The layer of a module; a module inside a package (architectures.basic) has its package's layer."""
    for candidate in (name, name.split(".")[0]):
        for index, members in enumerate(LAYERS):
            if candidate in members:
                return index
    raise AssertionError(f"module bilstm_exp.{name} has no layer: add it to LAYERS in this test and the README")


def imports(path: Path) -> set[str]:
    """The bilstm_exp modules a file imports (anywhere in it), without the 'bilstm_exp.' prefix."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("bilstm_exp.")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bilstm_exp"):
            if node.module == "bilstm_exp":  # from bilstm_exp import data, models
                found |= {f"bilstm_exp.{a.name}" for a in node.names}
            else:
                found.add(node.module)
    return {name.removeprefix("bilstm_exp.") for name in found if name != "bilstm_exp"}


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges = {}
    for name, path in modules.items():
        targets = set()
        for target in imports(path):
            while target not in modules and "." in target:  # a name imported from a module
                target = target.rsplit(".", 1)[0]
            if target in modules and target != name:
                targets.add(target)
        edges[name] = targets
    return edges


def test_no_import_cycles():
    edges = graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(edges[node]):
            if state.get(target) == 1:
                cycle = stack[stack.index(target):] + [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)


def test_modules_import_only_from_their_layer_or_below():
    back_edges = [f"{source} (layer {layer_of(source)}) imports {target} (layer {layer_of(target)})"
                  for source, targets in sorted(graph().items()) for target in sorted(targets)
                  if source != "__init__" and layer_of(target) > layer_of(source)]
    assert back_edges == []


@pytest.mark.parametrize("code", [
    "import bilstm_exp.compare",
    "import bilstm_exp.sweep",
    "import bilstm_exp.offline",
    "import bilstm_exp.tracking.store, bilstm_exp.tracking.session, bilstm_exp.tracking.registry",
    "from bilstm_exp.cli import main; main(['sync', '--help'])",
    "from bilstm_exp.cli import main; main(['compare', '--help'])",
    "from bilstm_exp.cli import main; main(['--help'])",
])
def test_light_commands_do_not_import_tensorflow(code):
    script = (f"import sys\ntry:\n    {code}\nexcept SystemExit:\n    pass\n"
              "heavy = sorted(m for m in ('tensorflow', 'keras') if m in sys.modules)\n"
              "print('HEAVY', heavy)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert "HEAVY []" in out.stdout, out.stdout[-500:] + out.stderr[-2000:]


@pytest.mark.parametrize("argv", [["--help"], ["sync", "--help"], ["runs", "--help"], ["compare", "--bogus"]])
def test_help_and_usage_errors_do_not_import_mlflow(argv):
    """MLflow takes about a second to import: `bilstm-exp --help` and a mistyped option answer without it."""
    script = (f"import sys\nfrom bilstm_exp.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
              "print('HEAVY', sorted(m for m in ('mlflow', 'tensorflow') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert "HEAVY []" in out.stdout, out.stdout[-500:] + out.stderr[-2000:]
