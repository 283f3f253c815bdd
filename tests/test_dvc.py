"""The DVC pipeline, run with the real `dvc` CLI in a temporary git copy of the project.

The copy gets tiny params (a few hundred synthetic examples, one epoch, 8 units) composed from its
own conf/ by `bilstm-exp compose-params`, and its own MLflow store (mlflow.db in the copy).

The page `dvc plots show` writes is opened in headless Debian Chromium (Playwright) with every
request that is not a local file aborted, as tests/test_ui.py does with the MLflow UI; it skips when
/usr/bin/chromium is missing (`make browser`). `make plots-screenshot` (UPDATE_SCREENSHOTS=1)
re-records docs/dvc-plots.png.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from bilstm_exp.config.compose import CONF_DIR
from bilstm_exp.stages import outputs
from bilstm_exp.stages import params as params_yaml
from tests.conftest import ROOT, SUBPROCESS_S, TINY, migrated_store

BIN = Path(sys.executable).parent  # dvc and bilstm-exp of this environment
TINY_PARAMS = [*TINY, "model.lstm_units=8"]
# The first repro of the shared pipeline: a few epochs that learn something, so the plots have curves.
REPRO_PARAMS = [*(o for o in TINY_PARAMS if not o.startswith("training.epochs=")), "training.epochs=4",
                "training.early_stopping.enabled=false", "optimizer.learning_rate=0.004"]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PLOTS_SCREENSHOT = ROOT / "docs" / "dvc-plots.png"


def env_for(repo: Path) -> dict[str, str]:
    """The stages import the copy's own src/, find `bilstm-exp` on PATH and stay offline."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONPATH": str(repo / "src"),
           "TF_CPP_MIN_LOG_LEVEL": "2", "DVC_NO_ANALYTICS": "1", "DO_NOT_TRACK": "true"}
    for name in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_STAGE", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):
        env.pop(name, None)
    return env


def sh(repo: Path, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    result = subprocess.run(list(args), cwd=repo, env=env_for(repo), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {result.returncode}\n{result.stdout[-3000:]}\n"
                             f"{result.stderr[-3000:]}")
    return result


def dvc(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return sh(repo, str(BIN / "dvc"), *args, check=check)


def bilstm(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return sh(repo, str(BIN / "bilstm-exp"), *args, check=check)


def ran(result: subprocess.CompletedProcess) -> set[str]:
    return set(re.findall(r"Running stage '([\w-]+)'", result.stdout + result.stderr))


def git_commit(repo: Path, message: str) -> None:
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-q", "-m", message)


def project_copy(dest: Path, *overrides: str) -> Path:
    """What a fresh clone holds (tracked files, plus work not committed yet), as a new git repo
    with params.yaml composed from its conf/ with ``overrides``."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    for result in ("dvc.lock", "reports"):  # results of runs here are not part of the test's pipeline
        shutil.rmtree(dest / result, ignore_errors=True) if (dest / result).is_dir() else (dest / result).unlink(
            missing_ok=True)
    sh(dest, "git", "init", "-q")
    sh(dest, "git", "config", "user.email", "tests@example.com")
    sh(dest, "git", "config", "user.name", "tests")
    bilstm(dest, "compose-params", *overrides)
    git_commit(dest, "project copy with tiny params")
    return dest


def mlflow_client(repo: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")


def all_runs(repo: Path) -> list:
    client = mlflow_client(repo)
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids)


def running_runs(db: Path, logged: str | None = None) -> int:
    """RUNNING runs in an MLflow sqlite store (that have logged metric ``logged``), read-only (never
    creating or migrating it)."""
    import sqlite3

    if not db.is_file():
        return 0
    query = "SELECT count(*) FROM runs WHERE status = 'RUNNING'"
    if logged is not None:
        query += " AND run_uuid IN (SELECT run_uuid FROM metrics WHERE key = ?)"
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as connection:
            return connection.execute(query, () if logged is None else (logged,)).fetchone()[0]
    except sqlite3.Error:  # the store is still being created
        return 0


def git_ignores(repo: Path, path: str) -> bool:
    return sh(repo, "git", "check-ignore", "-q", path, check=False).returncode == 0


def lock_md5(repo: Path, stage: str, path: str, section: str = "deps") -> str:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return next(e["md5"] for e in lock["stages"][stage][section] if e["path"] == path)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


# --------------------------------------------------------------------------- params.yaml and conf/


def test_params_yaml_is_the_default_composition_of_conf():
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        composed = OmegaConf.to_container(compose(config_name="config"), resolve=True)
    text = (ROOT / "params.yaml").read_text()
    fix = "Fix: run `bilstm-exp compose-params` and commit params.yaml"
    assert yaml.safe_load(text) == composed, f"params.yaml differs from the default composition of conf/. {fix}"
    assert params_yaml.read_stamp(text) == params_yaml.conf_md5(ROOT, composed), \
        f"params.yaml records another conf/ md5 than conf/ has now. {fix}"


def test_stages_refuse_params_yaml_composed_before_a_project_conf_changed(tmp_path, monkeypatch):
    """The staleness check covers the project's own conf/ (over the packaged configs), not only the
    packaged one: an edit there stops the stage with the command to run."""
    from bilstm_exp.errors import ConfigError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "conf" / "model").mkdir(parents=True)
    basic = tmp_path / "conf" / "model" / "basic.yaml"
    basic.write_text("defaults:\n  - /schema/model/basic@_here_\n\nlstm_units: 8\n")
    path = params_yaml.compose_params(tmp_path, [])
    assert params_yaml.load_params(path, tmp_path).model.lstm_units == 8
    basic.write_text("defaults:\n  - /schema/model/basic@_here_\n\nlstm_units: 16\n")
    with pytest.raises(ConfigError, match="conf/ changed since params.yaml was composed.*bilstm-exp compose-params"):
        params_yaml.load_params(path, tmp_path)


def test_dvc_composes_conf_into_params_yaml_on_exp_run():
    result = dvc(ROOT, "config", "--list", "--project")
    settings = dict(line.split("=", 1) for line in result.stdout.split())
    assert settings["hydra.enabled"] == "true"
    assert settings["hydra.config_dir"] == "src/bilstm_exp/conf"  # this repository's configs are the packaged ones
    assert settings.get("hydra.config_name", "config") == "config"


def test_stages_refuse_missing_inputs_with_the_fix(tmp_path):
    missing = bilstm(tmp_path, "prepare", "--params", "params.yaml", check=False)
    assert missing.returncode == 2
    assert "params.yaml: not found" in missing.stderr and "bilstm-exp compose-params" in missing.stderr

    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    train = bilstm(tmp_path, "train", "--params", "params.yaml", check=False)
    assert train.returncode == 2
    assert "data/prepared/: no prepared data" in train.stderr and "dvc repro prepare" in train.stderr
    evaluate = bilstm(tmp_path, "evaluate", check=False)
    assert evaluate.returncode == 2 and "dvc repro train" in evaluate.stderr
    both = bilstm(tmp_path, "train", "--params", "params.yaml", "model=attention", check=False)
    assert both.returncode == 2 and "compose-params model=attention" in both.stderr


def test_outputs_appear_only_when_the_stage_succeeds(tmp_path):
    old = tmp_path / "model"
    old.mkdir()
    (old / "model.keras").write_text("previous")
    with pytest.raises(KeyboardInterrupt):
        with outputs.staging(old, tmp_path / "metrics.json") as (folder, metrics):
            folder.mkdir()
            (folder / "model.keras").write_text("half-writ")
            raise KeyboardInterrupt  # Ctrl-C in the middle of writing
    assert (old / "model.keras").read_text() == "previous"
    assert not (tmp_path / "metrics.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"], "no temporary leftovers"

    with outputs.staging(old, tmp_path / "metrics.json") as (folder, metrics):
        folder.mkdir()
        (folder / "model.keras").write_text("new")
        metrics.write_text("{}")
    assert (old / "model.keras").read_text() == "new" and (tmp_path / "metrics.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "model"]


# --------------------------------------------------------------------------- the pipeline


@dataclass
class Reproduced:
    repo: Path
    first: subprocess.CompletedProcess  # the output of its first `dvc repro`


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory) -> Reproduced:
    """A project copy after its first `dvc repro`, shared by the tests below (the plots test only reads it,
    and runs first; the repro test goes on to change it). Its mlflow.db is new and empty, a copy of a migrated
    store (how a run creates its store is tested in test_first_hour.py)."""
    repo = project_copy(tmp_path_factory.mktemp("reproduced"), *REPRO_PARAMS)
    migrated_store(repo)
    return Reproduced(repo, dvc(repo, "repro"))


COLOURED_PIXELS = """canvas => {  // pixels of the marks (lines, bars, cells): coloured, unlike the grey axes and text
    const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
    let coloured = 0;
    for (let i = 0; i < pixels.length; i += 4) {
        const [r, g, b, a] = pixels.slice(i, i + 4);
        if (a > 0 && Math.max(r, g, b) - Math.min(r, g, b) > 60) coloured++;
    }
    return coloured;
}"""


@pytest.mark.slow
def test_plots_page_renders_offline_in_chromium(reproduced, tmp_path):
    repo = reproduced.repo
    assert ran(reproduced.first) == {"prepare", "train", "evaluate"}
    shown = dvc(repo, "plots", "show")
    page_file = repo / "dvc_plots" / "index.html"
    assert page_file.as_uri() in shown.stdout
    html = page_file.read_text(encoding="utf-8")
    assert not re.search(r"<script[^>]*\ssrc=", html), "the page must load no script file (DVC's own page uses a CDN)"
    assert "cdn.jsdelivr.net" not in html
    names = [next(iter(plot)) for plot in yaml.safe_load((repo / "dvc.yaml").read_text())["plots"]]
    assert git_ignores(repo, "dvc_plots/index.html")

    if not CHROMIUM.exists():
        pytest.skip("the page was written offline, but Debian's chromium is not installed at /usr/bin/chromium to "
                    "render it: run `make browser` as root (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e .[dev])")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 900})
            outside, failed, errors = [], [], []

            def local_only(route):  # the page must need nothing but itself: every other request is aborted
                if route.request.url.startswith("file://"):
                    route.continue_()
                else:
                    outside.append(route.request.url)
                    route.abort()

            page.route("**/*", local_only)
            page.on("requestfailed", lambda request: failed.append(request.url))
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.goto(page_file.as_uri())
            for name in names:  # vega-embed draws each plot's chart on a canvas inside the plot's div
                page.locator(f'[id="{name}"] canvas').wait_for(timeout=30_000)
            page.wait_for_timeout(500)  # let the last charts finish drawing
            for name in names:
                canvas = page.locator(f'[id="{name}"] canvas')
                box = canvas.bounding_box()
                assert box and box["width"] > 100 and box["height"] > 100, (name, box)
                assert canvas.evaluate(COLOURED_PIXELS) > 200, f"{name}: the chart has axes but no data drawn"
            assert outside == [] and failed == [] and errors == [], (outside, failed, errors)

            shot = tmp_path / "dvc-plots.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        PLOTS_SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, PLOTS_SCREENSHOT)


@pytest.mark.slow
def test_repro_reruns_what_changed_and_links_dvc_and_mlflow(reproduced):
    repo = reproduced.repo

    # a fresh clone: all three stages run
    first = reproduced.first
    assert ran(first) == {"prepare", "train", "evaluate"}
    assert (repo / "data/prepared/splits.npz").is_file() and (repo / "artifacts/model/model.keras").is_file()
    stats = read_json(repo / "reports/prepare/stats.json")
    assert sum(stats["length_histogram"].values()) == stats["num_examples"]["train"]
    train = read_json(repo / "reports/train/metrics.json")
    evaluation = read_json(repo / "reports/evaluate/metrics.json")
    assert train["mlflow_run_id"] == evaluation["mlflow_run_id"]
    history = (repo / "reports/train/history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,") and "val_loss" in history[0] and len(history) == 1 + train["epochs_trained"]
    for name in ("confusion.csv", "roc.csv", "precision_recall.csv", "length_buckets.csv"):
        assert len((repo / "reports/evaluate" / name).read_text().splitlines()) > 1, name

    # DVC -> MLflow: the run id in the metrics file is a finished run tagged with the stage and
    # the prepared data's md5 as dvc.lock records it; evaluate logged into the same run
    client = mlflow_client(repo)
    run = client.get_run(train["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["dvc_stage"] == "train"
    assert run.data.tags["dvc_prepared_md5"] == lock_md5(repo, "train", "data/prepared")
    assert run.data.tags["dvc_prepared_md5"] == lock_md5(repo, "prepare", "data/prepared", "outs")
    assert "dvc_exp_name" not in run.data.tags
    assert run.data.metrics["test/f1"] == pytest.approx(evaluation["test/f1"])
    assert any(k.startswith("test/accuracy_length_") for k in run.data.metrics)
    assert {f.path for f in client.list_artifacts(run.info.run_id, "evaluate")} >= {
        "evaluate/confusion.csv", "evaluate/roc.csv", "evaluate/precision_recall.csv", "evaluate/metrics.json"}
    plots = json.loads(dvc(repo, "plots", "show", "--json").stdout)["data"]
    assert {"loss", "confusion", "roc", "precision_recall", "accuracy_by_length"} <= set(plots)

    # nothing changed: nothing runs, no new MLflow run
    runs = len(all_runs(repo))
    again = dvc(repo, "repro")
    assert ran(again) == set() and "up to date" in again.stdout
    assert len(all_runs(repo)) == runs

    # conf/ edited but params.yaml not recomposed: the stage stops, names the fix, trains nothing
    basic = repo / "src/bilstm_exp/conf/model/basic.yaml"
    original = basic.read_text()
    basic.write_text(original + "lstm_units: 16\n")  # overrides the schema's default
    stale = dvc(repo, "repro", check=False)
    assert stale.returncode != 0
    assert "conf/ changed since params.yaml was composed" in stale.stderr
    assert "dvc exp run" in stale.stderr and "bilstm-exp compose-params" in stale.stderr
    assert len(all_runs(repo)) == runs
    basic.write_text(original)

    # a model param changed: prepare is skipped, train and evaluate run
    bilstm(repo, "compose-params", *TINY_PARAMS, "model.lstm_units=4")
    model_change = dvc(repo, "repro")
    assert ran(model_change) == {"train", "evaluate"}
    retrained = read_json(repo / "reports/train/metrics.json")["mlflow_run_id"]
    assert retrained != train["mlflow_run_id"]
    assert client.get_run(retrained).data.params["model.lstm_units"] == "4"
    git_commit(repo, "lstm_units=4")

    # `dvc exp run -S`: DVC recomposes conf/ with the overrides; a data param changed, so all run
    overrides = [*TINY_PARAMS, "data.num_samples=200", "model=attention", "model.attention_units=8"]
    experiment = dvc(repo, "exp", "run", "-n", "tiny-attention", *(a for o in overrides for a in ("-S", o)))
    assert ran(experiment) == {"prepare", "train", "evaluate"}
    text = (repo / "params.yaml").read_text()
    params = yaml.safe_load(text)
    assert params["model"]["name"] == "attention" and params["data"]["num_samples"] == 200
    # DVC wrote the bare composition; the first stage put the header back, with the conf/ it came from
    assert text.startswith(params_yaml.HEADER) and "# composed by: dvc exp run (tiny-attention)" in text
    assert params_yaml.read_stamp(text) == params_yaml.conf_md5(repo, params)
    exp_run_id = read_json(repo / "reports/train/metrics.json")["mlflow_run_id"]
    tags = client.get_run(exp_run_id).data.tags
    assert tags["dvc_exp_name"] == "tiny-attention" and tags["architecture"] == "attention"
    assert tags["dvc_prepared_md5"] == lock_md5(repo, "train", "data/prepared")
    shown = json.loads(dvc(repo, "exp", "show", "--json").stdout)
    found = _find_experiment(shown, "tiny-attention")
    assert found["params"]["params.yaml"]["data"]["model"]["name"] == "attention"
    assert found["metrics"]["reports/train/metrics.json"]["data"]["mlflow_run_id"] == exp_run_id
    assert "test/accuracy" in found["metrics"]["reports/evaluate/metrics.json"]["data"]


def _find_experiment(node, name: str) -> dict:
    """The `data` of the experiment called ``name`` anywhere in `dvc exp show --json` output."""
    if isinstance(node, dict):
        if node.get("name") == name and isinstance(node.get("data"), dict):
            return node["data"]
        children = node.values()
    elif isinstance(node, list):
        children = node
    else:
        return {}
    for child in children:
        found = _find_experiment(child, name)
        if found:
            return found
    return {}


@pytest.mark.slow
def test_raw_data_round_trips_through_a_remote(tmp_path):
    repo = project_copy(tmp_path / "repo", *TINY_PARAMS)
    rows = ["text,label"] + [f"{'a fine film' if i % 2 else 'a dull film'} number {i},{i % 2}" for i in range(120)]
    raw = repo / "data/raw/reviews.csv"
    raw.write_text("\n".join(rows) + "\n")
    dvc(repo, "add", "data/raw/reviews.csv")
    assert "/reviews.csv" in (repo / "data/raw/.gitignore").read_text()  # git keeps only the .dvc pointer
    bilstm(repo, "compose-params", "data=file", "data.path=data/raw/reviews.csv", "data.max_length=48",
           *(o for o in TINY_PARAMS if not o.startswith("data.")))
    assert ran(dvc(repo, "repro", "prepare")) == {"prepare"}
    dvc(repo, "remote", "add", "--default", "storage", str(tmp_path / "remote"))
    git_commit(repo, "reviews as data=file")
    dvc(repo, "push")

    clone = tmp_path / "clone"
    sh(tmp_path, "git", "clone", "-q", str(repo), str(clone))
    assert not (clone / "data/raw/reviews.csv").exists()
    dvc(clone, "pull", "data/raw/reviews.csv.dvc", "prepare")  # train never ran here: nothing to pull for it
    assert (clone / "data/raw/reviews.csv").read_bytes() == raw.read_bytes()
    assert (clone / "data/prepared/splits.npz").read_bytes() == (repo / "data/prepared/splits.npz").read_bytes()
    status = json.loads(dvc(clone, "status", "prepare", "--json").stdout)
    assert status == {}, f"the pulled prepare stage should be up to date: {status}"

    # the raw file changes: prepare (whose deps include data/raw) is out of date
    with raw.open("a") as handle:
        handle.write("one more fine film,1\n")
    dvc(repo, "add", "data/raw/reviews.csv")
    assert "prepare" in json.loads(dvc(repo, "status", "prepare", "--json").stdout)


@pytest.mark.slow
def test_interrupted_repro_leaves_nothing_a_later_run_trusts(tmp_path):
    import signal
    import time

    # many epochs: the interrupt lands in the middle of fit, not in the (signal-deferring) registration
    repo = project_copy(tmp_path, *TINY_PARAMS, "training.epochs=200", "training.early_stopping.enabled=false")
    dvc(repo, "repro", "prepare")
    process = subprocess.Popen([str(BIN / "dvc"), "repro"], cwd=repo, env=env_for(repo), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:  # Ctrl-C (SIGINT to the process group, as a terminal sends it) once the train stage's first epoch is logged
        deadline = time.monotonic() + 120
        while not running_runs(repo / "mlflow.db", logged="train/loss"):
            assert process.poll() is None and time.monotonic() < deadline, "train never logged its first epoch"
            time.sleep(0.2)
        os.killpg(process.pid, signal.SIGINT)
        output, _ = process.communicate(timeout=SUBPROCESS_S)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode != 0, output[-2000:]
    assert not (repo / "artifacts/model").exists() and not (repo / "reports/train/metrics.json").exists()
    assert "train" not in yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    leftovers = [p for p in repo.rglob("*.tmp") if ".dvc" not in p.parts and ".git" not in p.parts]
    assert leftovers == []
    status = json.loads(dvc(repo, "status", "--json").stdout)
    assert "train" in status and "prepare" not in status, status  # the next repro re-runs train, keeps prepare
    assert [run.info.status for run in all_runs(repo)] == ["KILLED"]
