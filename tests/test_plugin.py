"""Plugins, `bilstm-exp init` and the optional extras, against the real commands in a project folder.

- An optimizer from an installed package's entry point (group ``bilstm_exp.optimizers``) and a data
  source from a module the project names in ``plugins:`` train a real run together.
- A plugin that fails to import, or registers a wrong schema, is one line, exit 2.
- ``bilstm-exp init`` outside git/DVC says what to run next; a second one refuses without
  ``--force``; one whose composition fails leaves nothing behind.
- A command whose extra is missing names the extra, in one line, exit 2. The extra's module is made
  unimportable for that process only (a ``sitecustomize`` that sets ``sys.modules[name] = None``,
  as Python does for a module that is not installed), nothing of bilstm-exp is mocked.
"""

from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path

import pytest

from tests.conftest import TINY, migrated_store, run_module

OPTIMIZER_PLUGIN = '''
"""An installed package's optimizer: Keras's Lion (optimizer=lion)."""
from dataclasses import dataclass

from bilstm_exp.config.optimizer_schema import OptimizerConfig
from bilstm_exp.models.optim import register


@dataclass
class LionOptimizerConfig(OptimizerConfig):
    name: str = "lion"
    learning_rate: float = 0.0003
    beta_2: float = 0.99  # Lion's second momentum decay


@register("lion", schema=LionOptimizerConfig)
def build(cfg, **common):
    import keras

    return keras.optimizers.Lion(beta_2=cfg.beta_2, **common)
'''

DATA_PLUGIN = '''
"""The project's own data source: one folder per label, one text file per text (data=folder)."""
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bilstm_exp.config.data_schema import FileDataConfig
from bilstm_exp.data.sources import RawData, register


@dataclass
class FolderDataConfig(FileDataConfig):
    name: str = "folder"
    suffix: str = ".txt"  # the files read in each label's folder


@register("folder", schema=FolderDataConfig)
def load(cfg: FolderDataConfig) -> RawData:
    folders = sorted(p for p in Path(cfg.path).iterdir() if p.is_dir())
    texts, labels = [], []
    for label, folder in enumerate(folders):
        for file in sorted(folder.glob(f"*{cfg.suffix}")):
            texts.append(file.read_text(encoding=cfg.encoding))
            labels.append(label)
    return RawData(texts, np.array(labels), [folder.name for folder in folders])
'''


def installed_package(site: Path, name: str, group: str, entry: str, module: str) -> None:
    """What `pip install` leaves of a package with one entry point: its module and its dist-info."""
    (site / f"{name}.py").write_text(textwrap.dedent(module), encoding="utf-8")
    info = site / f"{name}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n", encoding="utf-8")
    (info / "entry_points.txt").write_text(f"[{group}]\n{entry} = {name}\n", encoding="utf-8")


@pytest.fixture
def project(tmp_path) -> Path:
    """A project folder with the configs of two plugin options and its texts in folders."""
    migrated_store(tmp_path)
    (tmp_path / "conf" / "optimizer").mkdir(parents=True)
    (tmp_path / "conf" / "optimizer" / "lion.yaml").write_text(
        "defaults:\n  - /schema/optimizer/adam@_here_\nname: lion\nlearning_rate: 0.0003\nbeta_2: 0.99\n")
    (tmp_path / "conf" / "data").mkdir()
    (tmp_path / "conf" / "data" / "folder.yaml").write_text(
        "defaults:\n  - /schema/data/file@_here_\nname: folder\npath: texts\nsuffix: .txt\n")
    (tmp_path / "my_data").mkdir()
    (tmp_path / "my_data" / "folder.py").write_text(textwrap.dedent(DATA_PLUGIN), encoding="utf-8")
    for label, cue in (("negative", "dull tedious"), ("positive", "great moving")):
        (tmp_path / "texts" / label).mkdir(parents=True)
        for i in range(80):
            (tmp_path / "texts" / label / f"{i}.txt").write_text(f"the film {cue} story {i % 7} acting")
    return tmp_path


def with_site(site: Path) -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}


@pytest.mark.slow
def test_an_installed_optimizer_and_a_listed_data_source_train_a_run(project, tmp_path_factory):
    site = tmp_path_factory.mktemp("site-packages")
    installed_package(site, "lion_plugin", "bilstm_exp.optimizers", "lion", OPTIMIZER_PLUGIN)
    tiny = [o for o in TINY if not o.startswith("data.num_samples") and not o.startswith("data.median")]
    out = run_module(["data=folder", "optimizer=lion", "+plugins=[my_data.folder]", "model.lstm_units=8", *tiny],
                     project, env=with_site(site))
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    [run] = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert (run.info.status, run.data.params["optimizer.name"], run.data.params["optimizer.beta_2"],
            run.data.params["data.name"], run.data.params["data.suffix"]) == ("FINISHED", "lion", "0.99", "folder",
                                                                               ".txt")


def one_line_exit_2(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 2, out.stdout[-1000:] + out.stderr[-2000:]
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr, out.stderr
    return out.stderr


def test_an_entry_point_that_fails_to_import_is_one_line_naming_the_package(project, tmp_path_factory):
    site = tmp_path_factory.mktemp("site-packages")
    installed_package(site, "broken_plugin", "bilstm_exp.architectures", "wide", "import not_installed_at_all\n")
    message = one_line_exit_2(run_module(["training.epochs=1"], project, env=with_site(site)))
    for part in ("'wide'", "bilstm_exp.architectures", "broken_plugin", "not_installed_at_all", "Fix:",
                 "pip uninstall broken_plugin"):
        assert part in message


@pytest.mark.slow  # training subprocesses: `make test` runs it, not the inner loop
def test_a_listed_plugin_that_is_missing_or_registers_a_wrong_schema_is_one_line(project):
    missing = one_line_exit_2(run_module(["+plugins=[my_data.nothing_here]"], project))
    assert "my_data.nothing_here" in missing and "Fix:" in missing
    (project / "my_data" / "clash.py").write_text(textwrap.dedent('''
        from bilstm_exp.config.optimizer_schema import OptimizerConfig
        from bilstm_exp.models.optim import register

        @register("adam", schema=OptimizerConfig)  # the packaged adam's name
        def build(cfg, **common):
            raise AssertionError("never built")
    '''))
    clash = one_line_exit_2(run_module(["+plugins=[my_data.clash]"], project))
    assert "'adam' exists already" in clash and "Fix:" in clash


def init(folder: Path, *args: str) -> subprocess.CompletedProcess:
    return run_module(["init", *args], folder, module="bilstm_exp.cli.main")


def test_init_outside_git_and_dvc_says_what_to_run_and_a_second_init_refuses(tmp_path):
    out = init(tmp_path, "new-project")
    assert out.returncode == 0, out.stderr
    assert "Next, in new-project: git init && dvc init && dvc config hydra.enabled true" in out.stdout
    root = tmp_path / "new-project"
    assert {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} == {
        "conf/config.yaml", "conf/data/file.yaml", "dvc.yaml", "params.yaml", ".gitignore", ".dvcignore"}
    (root / "dvc.yaml").write_text("# the user's own pipeline\n")
    message = one_line_exit_2(init(root))
    assert "dvc.yaml" in message and "conf/config.yaml" in message and "--force" in message
    assert (root / "dvc.yaml").read_text() == "# the user's own pipeline\n"
    assert init(root, "--force").returncode == 0
    assert "bilstm-exp prepare --params params.yaml" in (root / "dvc.yaml").read_text()


def test_init_keeps_a_projects_gitignore_and_adds_only_the_lines_it_lacks(tmp_path):
    (tmp_path / ".gitignore").write_text("/mlflow.db*\nmy_secrets/")  # no newline at the end
    assert init(tmp_path).returncode == 0
    lines = (tmp_path / ".gitignore").read_text().splitlines()
    assert lines[:2] == ["/mlflow.db*", "my_secrets/"] and lines.count("/mlflow.db*") == 1
    assert {"/mlartifacts/", "/outputs/"} <= set(lines)


def test_an_init_whose_composition_fails_leaves_nothing_behind(tmp_path):
    (tmp_path / "conf" / "training").mkdir(parents=True)
    (tmp_path / "conf" / "training" / "default.yaml").write_text("epochs: [unclosed\n")
    one_line_exit_2(init(tmp_path))
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()) == [
        "conf/training/default.yaml"]


def blocked(tmp_path: Path, module: str) -> dict[str, str]:
    """An environment where ``module`` cannot be imported, as if its extra were not installed."""
    folder = tmp_path / f"without-{module}"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(f"import sys\nsys.modules[{module!r}] = None\n")
    return with_site(folder)


@pytest.mark.parametrize("module, args, cli, extra", [
    ("psycopg", ["server", "start", "--dir", "team-server"], True, "server"),
    ("hydra_plugins.hydra_submitit_launcher", ["-m", "hydra/launcher=submitit_local", "seed=1"], False, "cluster"),
])
def test_a_command_whose_extra_is_missing_names_the_extra(tmp_path, module, args, cli, extra):
    (tmp_path / "texts.txt").write_text("a great film\n")
    entry = "bilstm_exp.cli.main" if cli else "bilstm_exp"
    out = run_module(args, tmp_path, env=blocked(tmp_path, module), module=entry)
    message = one_line_exit_2(out)
    assert f"[{extra}] extra" in message and f"pip install 'bilstm-exp[{extra}]'" in message
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "team-server").exists()


def test_the_extras_are_installed_here():
    """The blocked modules above are what the extras install: the dev install has all of them."""
    from bilstm_exp import extras

    for module, extra in (("psycopg", "server"), ("flask_wtf", "server"),
                          ("hydra_plugins.hydra_submitit_launcher", "cluster")):
        extras.require(module, extra, "the dev install")  # raises MissingExtraError when it is not found


def test_a_stage_refuses_params_composed_by_another_bilstm_exp_version_until_recomposed(tmp_path):
    """An upgrade must re-run the project's pipeline: its params.yaml records the version it was
    composed with (bilstm_exp_version, a param of every stage), and the stages refuse a stale one."""
    import yaml

    from bilstm_exp import __version__

    assert init(tmp_path).returncode == 0
    params = tmp_path / "params.yaml"
    assert yaml.safe_load(params.read_text())["bilstm_exp_version"] == __version__
    params.write_text(params.read_text().replace(f"bilstm_exp_version: {__version__}", "bilstm_exp_version: 0.0.1"))
    cli = "bilstm_exp.cli.main"
    message = one_line_exit_2(run_module(["prepare", "--params", "params.yaml"], tmp_path, module=cli))
    assert f"composed with bilstm-exp 0.0.1 and {__version__} is installed" in message and "Fix:" in message
    assert run_module(["compose-params"], tmp_path, module=cli).returncode == 0
    assert yaml.safe_load(params.read_text())["bilstm_exp_version"] == __version__


def test_constraints_pin_every_installed_package_and_the_gpu_extra():
    """`make install` pins with constraints.txt: every distribution of the dev install (the base and
    every extra but [gpu]) at the version installed here, and the [gpu] TensorFlow at the CPU one's."""
    import re
    from importlib.metadata import distributions

    from tests.conftest import ROOT

    def norm(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    lines = [line.split("#")[0].strip() for line in (ROOT / "constraints.txt").read_text().splitlines()]
    pins = {norm(name): version for name, _, version in (line.partition("==") for line in lines if "==" in line)}
    installed = {norm(d.metadata["Name"]): d.version for d in distributions()}
    assert {name: version for name, version in installed.items()
            if pins.get(name) != version and name not in ("bilstm-exp", "pip")} == {}
    assert pins["tensorflow"] == pins["tensorflow-cpu"] and any(name.startswith("nvidia-cudnn") for name in pins)
