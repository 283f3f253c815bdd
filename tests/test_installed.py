"""bilstm-exp as a user gets it: the wheel built from this working tree, installed into a new
virtualenv, used in an empty git repository of the user's (issue 21's done-when).

The virtualenv is new and the package comes only from the wheel: ``pip install --no-deps`` puts
it there, and nothing of this repository is on its path (``src/`` is not, the editable install's
``.pth`` is not read). Its dependencies are the ones this test session runs on, not installed a
second time (that would take minutes and the network): a ``.pth`` file appends this environment's
site-packages as a plain path, and ``pip install --dry-run --no-index -c constraints.txt`` checks
that they satisfy the wheel's declared requirements at the pinned versions. The user's project
follows the README's "Use it in your own project": ``bilstm-exp init``, a run, a sweep, ``dvc
repro``, ``dvc exp run -S``, then an architecture of their own by the README's recipe (the files are
taken from the README itself).
"""

from __future__ import annotations

import csv
import hashlib
import os
import random
import re
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("installed_wheel")]

# tiny runs: 200 short texts, one epoch, small layers, Keras's own LSTM kernel (no XLA compiles)
TINY = ["data.max_samples=200", "data.max_length=48", "data.num_buckets=3", "training.epochs=1",
        "training.batch_size=16", "model.embedding_dim=8", "model.lstm_units=8", "profiling.latency_samples=5",
        "model.kernel=keras"]


@dataclass
class Venv:
    folder: Path
    wheel: Path

    @property
    def python(self) -> str:
        return str(self.folder / "bin" / "python")

    def env(self) -> dict[str, str]:
        """A user's shell with this virtualenv activated: its bin/ first, nothing of this repository."""
        path = [str(self.folder / "bin")] + [p for p in os.environ.get("PATH", "").split(os.pathsep)
                                              if p and Path(p).resolve() != Path(sys.executable).parent.resolve()]
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLFLOW_TRACKING_URI", "VIRTUAL_ENV")}
        return {**env, "PATH": os.pathsep.join(path), "VIRTUAL_ENV": str(self.folder),
                "GIT_AUTHOR_NAME": "user", "GIT_AUTHOR_EMAIL": "user@example.com",
                "GIT_COMMITTER_NAME": "user", "GIT_COMMITTER_EMAIL": "user@example.com"}

    def run(self, args: list[str], cwd: Path, expect: int = 0, timeout: float = 420) -> subprocess.CompletedProcess:
        """``bilstm-exp ...`` or ``python ...`` or ``dvc ...`` as the user types it, in ``cwd``."""
        executable = {"python": [self.python], "dvc": [self.python, "-m", "dvc"],
                      "bilstm-exp": [str(self.folder / "bin" / "bilstm-exp")]}[args[0]]
        out = subprocess.run([*executable, *args[1:]], cwd=cwd, env=self.env(), capture_output=True, text=True,
                             timeout=timeout)
        assert out.returncode == expect, (f"{' '.join(args)}: exit {out.returncode}\n{out.stdout[-3000:]}\n"
                                          f"{out.stderr[-3000:]}")
        return out


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Venv:
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(ROOT)],
                   check=True, capture_output=True, text=True, timeout=300)
    wheel = next(dist.glob("bilstm_exp-*.whl"))
    folder = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--clear", str(folder)], check=True, timeout=120)
    pip = [sys.executable, "-m", "pip", "--python", str(folder / "bin" / "python"), "install", "--no-index", "-q"]
    subprocess.run([*pip, "--no-deps", str(wheel)], check=True, capture_output=True, text=True, timeout=300)
    site = Path(subprocess.run([str(folder / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()"
                                "['purelib'])"], capture_output=True, text=True, check=True).stdout.strip())
    (site / "_dependencies_of_the_test_session.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    check = subprocess.run([*pip, "--dry-run", "-c", str(ROOT / "constraints.txt"), str(wheel)],
                           capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stdout[-2000:] + check.stderr[-2000:]  # the pinned set satisfies the wheel
    return Venv(folder, wheel)


def write_texts(path: Path, rows: int = 200) -> None:
    """Short labelled reviews, a user's CSV: a cue word decides the label."""
    rng = random.Random(0)
    cues = {"positive": ["great", "moving", "superb", "wonderful"], "negative": ["dull", "tedious", "awful", "boring"]}
    filler = ["the", "film", "plot", "was", "and", "a", "story", "acting", "it", "really", "quite", "long"]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for i in range(rows):
            label = "positive" if i % 2 else "negative"
            words = [rng.choice(filler) for _ in range(rng.randint(6, 20))]
            words.insert(rng.randrange(len(words)), rng.choice(cues[label]))
            writer.writerow([" ".join(words), label])


@pytest.fixture(scope="module")
def project(venv, tmp_path_factory) -> Path:
    """An empty git + DVC repository where the user ran `bilstm-exp init` and put their data."""
    root = tmp_path_factory.mktemp("my-project")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    venv.run(["dvc", "init", "-q"], root)
    out = venv.run(["bilstm-exp", "init"], root)
    for command in ("python -m bilstm_exp", "dvc repro"):
        assert command in out.stdout, out.stdout
    write_texts(root / "data" / "raw" / "texts.csv")  # where conf/data/file.yaml's data.path points
    return root


def runs(root: Path, **filters: str) -> list:
    """The runs in the project's own store, ./mlflow.db."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    found = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=500)
    return [r for r in found if all(r.data.tags.get(k) == v or r.data.params.get(k) == v for k, v in filters.items())]


def tree_digest(root: Path) -> str:
    digest = hashlib.md5()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and ".git" not in p.parts):
        digest.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return digest.hexdigest()


def test_the_wheel_and_the_sdist_hold_configs_templates_and_licences_and_no_tests(venv):
    import tarfile
    import zipfile

    wheel = set(zipfile.ZipFile(venv.wheel).namelist())
    [sdist_path] = venv.wheel.parent.glob("bilstm_exp-*.tar.gz")
    sdist = {name.split("/", 1)[1] for name in tarfile.open(sdist_path).getnames() if "/" in name}
    packaged = ["conf/config.yaml", "conf/model/basic.yaml", "conf/experiment/compare_architectures.yaml",
                "templates/init/conf/config.yaml", "templates/init/dvc.yaml", "templates/dvc_plots/index.html",
                "templates/dvc_plots/LICENSE-vega", "templates/dvc_plots/LICENSE-vega-lite",
                "templates/dvc_plots/LICENSE-vega-embed"]
    assert {f"bilstm_exp/{name}" for name in packaged} <= wheel
    assert {f"src/bilstm_exp/{name}" for name in packaged} | {"LICENSE", "constraints.txt"} <= sdist
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in wheel)
    assert [name for name in wheel | sdist if name.startswith(("tests/", "benchmarks/"))] == []


def test_the_package_comes_from_the_wheel_only(venv, project):
    out = venv.run(["python", "-c", "import sys, bilstm_exp; print(bilstm_exp.__file__); print(sys.path)"], project)
    module, path = out.stdout.splitlines()
    assert Path(module).is_relative_to(venv.folder)
    assert str(ROOT / "src") not in path


def test_init_a_second_time_refuses_lists_the_files_and_changes_nothing(venv, project):
    before = tree_digest(project)
    out = venv.run(["bilstm-exp", "init"], project, expect=2)
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    for name in ("conf/config.yaml", "dvc.yaml", "params.yaml"):
        assert name in out.stderr
    assert "--force" in out.stderr
    assert tree_digest(project) == before


def test_a_run_and_a_sweep_finish_in_the_projects_store(venv, project, users_own):
    """The run: `users_own`'s (`python -m bilstm_exp` with the project's defaults, seed 42, and the user's
    own architecture and optimizer), one training process fewer than a plain run of its own."""
    venv.run(["python", "-m", "bilstm_exp", "-m", "seed=1,2", *TINY], project)
    finished = [r for r in runs(project) if r.info.status == "FINISHED"]
    assert {r.data.params.get("seed") for r in finished} >= {"42", "1", "2"}
    assert {r.data.params.get("data.name") for r in finished if "seed" in r.data.params} == {"file"}


def test_dvc_repro_and_exp_run_finish_in_the_projects_store(venv, project):
    venv.run(["bilstm-exp", "compose-params", *TINY], project)
    venv.run(["dvc", "repro"], project)
    assert (project / "reports" / "evaluate" / "metrics.json").is_file()
    venv.run(["dvc", "plots", "show"], project)  # the packaged offline page: Vega inlined, no script from a CDN
    assert not re.search(r"<script[^>]*\ssrc=", (project / "dvc_plots" / "index.html").read_text(encoding="utf-8"))
    subprocess.run(["git", "add", "-A"], cwd=project, check=True, env=venv.env())
    subprocess.run(["git", "commit", "-q", "-m", "pipeline"], cwd=project, check=True, env=venv.env())
    attention = ["model=attention", "model.attention_units=8", *TINY]
    venv.run(["dvc", "exp", "run", *[f"-S{o}" for o in attention]], project)
    stages = [r for r in runs(project) if r.data.tags.get("dvc_stage") and r.info.status == "FINISHED"]
    assert {r.data.params.get("model.name") for r in stages} == {"basic", "attention"}
    import yaml

    assert yaml.safe_load((project / "params.yaml").read_text())["bilstm_exp_version"] == _version(venv, project)


def _version(venv: Venv, project: Path) -> str:
    return venv.run(["python", "-c", "import bilstm_exp; print(bilstm_exp.__version__)"], project).stdout.strip()


def readme_files() -> dict[str, str]:
    """The files the README's "Use it in your own project" shows: a line naming `path` then its code."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Use it in your own project", 1)[1].split("\n## ", 1)[0]
    return {path: body for path, body in re.findall(r"`([\w/.]+)`:\n\n```\w*\n(.*?)```", section, re.S)}


@pytest.fixture(scope="module")
def users_own(venv, project) -> dict[str, str]:
    """The project with the user's own additions, trained by one run that uses them all: an architecture
    by the README's recipe (its files, listed in `plugins`), a training default of the project's own
    (batch_size 8) and an optimizer of its own (slow_adam). The README's files, by path."""
    files = readme_files()
    for path, body in files.items():
        (project / path).parent.mkdir(parents=True, exist_ok=True)
        (project / path).write_text(body, encoding="utf-8")
    config = project / "conf" / "config.yaml"
    config.write_text(config.read_text().replace("plugins: []", "plugins: [my_models.wide]"))
    (project / "conf" / "training").mkdir(exist_ok=True)
    (project / "conf" / "training" / "default.yaml").write_text(
        "defaults:\n  - /schema/training/default@_here_\nbatch_size: 8  # the project's own default\n")
    (project / "conf" / "optimizer").mkdir(exist_ok=True)
    (project / "conf" / "optimizer" / "slow_adam.yaml").write_text(
        "defaults:\n  - /schema/optimizer/adam@_here_\nlearning_rate: 0.0001\n")
    venv.run(["python", "-m", "bilstm_exp", "model=wide", "optimizer=slow_adam",
              *[o for o in TINY if "batch_size" not in o]], project)
    return files


def test_an_architecture_of_the_users_own_trains_by_the_readme_recipe(project, users_own):
    files = users_own
    assert {"my_models/wide.py", "conf/model/wide.yaml"} <= set(files)
    wide = runs(project, architecture="wide")
    assert [r.info.status for r in wide] == ["FINISHED"]
    assert wide[0].data.params["model.dense_units"] == files["conf/model/wide.yaml"].split("dense_units:")[1].split()[0]


def test_a_users_conf_overrides_a_default_and_adds_an_option_and_help_lists_both(venv, project, users_own):
    out = venv.run(["python", "-m", "bilstm_exp", "--help"], project)
    groups = dict(re.findall(r"^(\w+): (.*)$", out.stdout.split("== Config ==")[0], re.M))
    assert "slow_adam" in groups["optimizer"] and "adam" in groups["optimizer"]  # added beside the packaged
    assert "batch_size: 8" in out.stdout.split("== Config ==")[1]  # the overridden default, composed
    [own] = runs(project, architecture="wide")  # the users_own run, whatever ran in the project since
    assert (own.info.status, own.data.params["training.batch_size"],
            own.data.params["optimizer.learning_rate"]) == ("FINISHED", "8", "0.0001")


def test_a_broken_plugin_is_one_line_exit_2(venv, project):
    (project / "my_models").mkdir(exist_ok=True)
    (project / "my_models" / "broken.py").write_text("import a_package_nobody_installed\n")
    out = venv.run(["python", "-m", "bilstm_exp", "plugins=[my_models.broken]", *TINY], project, expect=2)
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr, out.stderr
    assert "my_models.broken" in out.stderr and "a_package_nobody_installed" in out.stderr and "Fix:" in out.stderr
