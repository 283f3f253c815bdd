"""The package's shape: no import cycles, modules import only from lower layers, light commands stay light.

The layers, lowest first (the LAYERS table below; docs/architecture.md draws them); a module may
import from its own layer or lower ones, counting imports inside functions too (a lazy import is still
a dependency). Every module has a layer, named in full: a new module must be placed.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SUBPROCESS_S

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "bilstm_exp"

LAYERS = [
    {"errors", "quiet", "tracking.redaction", "tracking.lineage", "tracking.system_metrics", "analysis.statistics",
     "analysis.formatting", "extras", "plugins", "disk", "tracking.sqlite_file", "training.signals",
     "tracking.retry", "processes"},
    {"config.checks", "config.data_schema", "config.model_schema", "config.optimizer_schema", "config.run_schema",
     "config.schema", "config.registration", "config.overrides", "config.plain",
     "data.vocabulary", "data.splits", "data.tables", "data.batching"},
    {"config.compose", "data.sources", "data.prepare"},
    {"models.fast_lstm", "models.layers", "models.architectures", "models.architectures.registry",
     "models.vector_files", "models.embeddings", "models.build", "models.optim",
     "models.optimizer_step", "models.xla_cache", "models.reuse"},
    {"tracking.store"},
    {"tracking.model_registry", "tracking.offline", "tracking.ending", "tracking.datasets"},
    {"tracking.session"},
    {"tracking.callback", "tracking.register_command", "tracking.runs", "tracking.sync", "serving.model",
     "serving.predict", "analysis.reports", "team.common", "team.run_as", "team.postgres",
     "team.mlflow_server", "team.server", "team.users", "team.cli", "team.optuna_storage"},
    {"analysis.query", "analysis.samples", "analysis.groups", "analysis.verdicts", "analysis.baseline",
     "analysis.table", "analysis.plots"},
    {"training.checkpoints", "training.evaluation", "training.profiling", "training.distribute"},
    {"training.recording", "training.summary", "training.pareto", "training.heldout", "training.progress",
     "training.breakdown"},
    {"training.runner", "training.crossval", "training.sweep", "training.sweep_plan"},
    {"stages.outputs", "stages.params", "stages.prepare", "stages.train", "stages.evaluate", "stages.commands",
     "analysis.compare", "analysis.bench", "analysis.bench_setup", "analysis.bench_measure",
     "analysis.bench_report"},
    {"cli.init", "cli.train"},
    {"cli.commands", "cli.main", "__main__"},
]
PACKAGES = {"__init__", "config", "conf", "data", "models", "training", "tracking", "analysis", "serving", "team",
            "stages", "cli"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts) or "__init__"


def layer_of(name: str) -> int:
    """The layer of a module; an architecture module (models.architectures.basic) has its package's layer."""
    if name in PACKAGES:  # a package's __init__: a docstring, no imports (checked below)
        return -1
    for candidate in (name, name.rsplit(".", 1)[0]):
        for index, members in enumerate(LAYERS):
            if candidate in members and (candidate == name or candidate == "models.architectures"):
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
            else:  # from bilstm_exp.data import prepare: the module bilstm_exp.data.prepare, if it is one
                found.add(node.module)
                found |= {f"{node.module}.{a.name}" for a in node.names}
    return {name.removeprefix("bilstm_exp.") for name in found if name != "bilstm_exp"}


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges = {}
    for name, path in modules.items():
        targets = set()
        for target in imports(path):
            if target not in modules:
                continue  # a name imported from a module (bilstm_exp.errors.UserError): the module is found too
            if target != name and not (target in PACKAGES and any(t.startswith(target + ".") for t in imports(path))):
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


def test_package_inits_import_nothing():
    """A subpackage's __init__ is its docstring (what it owns, what it may import): importing one module
    of a package never drags in the rest of it."""
    heavy = {name: sorted(imports(PACKAGE.joinpath(*name.split("."), "__init__.py")))
             for name in PACKAGES - {"__init__"}}
    assert {name: found for name, found in heavy.items() if found} == {}


def test_modules_import_only_from_their_layer_or_below():
    back_edges = [f"{source} (layer {layer_of(source)}) imports {target} (layer {layer_of(target)})"
                  for source, targets in sorted(graph().items()) for target in sorted(targets)
                  if source != "__init__" and layer_of(target) > layer_of(source)]
    assert back_edges == []


@pytest.mark.parametrize("code", [
    "import bilstm_exp.analysis.compare",
    "import bilstm_exp.training.sweep",
    "import bilstm_exp.tracking.offline",
    "import bilstm_exp.tracking.store, bilstm_exp.tracking.session, bilstm_exp.tracking.model_registry",
    "from bilstm_exp.cli.main import main; main(['sync', '--help'])",
    "from bilstm_exp.cli.main import main; main(['compare', '--help'])",
    "from bilstm_exp.cli.main import main; main(['--help'])",
])
def test_light_commands_do_not_import_tensorflow(code):
    script = (f"import sys\ntry:\n    {code}\nexcept SystemExit:\n    pass\n"
              "heavy = sorted(m for m in ('tensorflow', 'keras') if m in sys.modules)\n"
              "print('HEAVY', heavy)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=SUBPROCESS_S)
    assert "HEAVY []" in out.stdout, out.stdout[-500:] + out.stderr[-2000:]


@pytest.mark.parametrize("argv", [["--help"], ["sync", "--help"], ["runs", "--help"], ["compare", "--bogus"],
                                  ["predict", "--file", "no-such-texts.txt"]])
def test_help_and_usage_errors_do_not_import_mlflow(argv):
    """MLflow takes about a second to import: `bilstm-exp --help`, a mistyped option and predict's own
    checks of its texts and file answer without it."""
    script = (f"import sys\nfrom bilstm_exp.cli.main import main\n"
              f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
              "print('HEAVY', sorted(m for m in ('mlflow', 'tensorflow') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=SUBPROCESS_S)
    assert "HEAVY []" in out.stdout, out.stdout[-500:] + out.stderr[-2000:]


MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 50


def test_modules_and_functions_stay_short_enough_to_read():
    """No module over 400 lines, no function over 50 (docstring included): a newcomer reads each in one go."""
    long_modules, long_functions = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        name = module_name(path)
        if text.count("\n") > MAX_MODULE_LINES:
            long_modules.append(f"{name}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long_functions.append(f"{name}.{node.name}: {length} lines")
    assert (long_modules, long_functions) == ([], [])
