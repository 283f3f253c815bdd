"""Every option of every group composes and validates; bad values fail with clear messages."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from bilstm_exp.config.compose import CONF_DIR, compose
from bilstm_exp.config.plain import flatten, to_dict
from bilstm_exp.config.registration import schema_defaults
from bilstm_exp.config.schema import SCHEMAS, validate
from bilstm_exp.errors import ConfigError
from tests.conftest import SUBPROCESS_S

GROUPS = ["data", "model", "optimizer", "clipping", "training", "tracking", "profiling"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_and_validates(group, option):
    extra = ["data.path=reviews.csv"] if (group, option) == ("data", "file") else []
    config = validate(compose([f"{group}={option}", *extra]))
    node = getattr(config, group)
    assert getattr(node, "name", option) == option or group == "training"


def test_default_composition_is_a_synthetic_basic_bilstm():
    config = validate(compose([]))
    assert (config.data.name, config.model.name, config.optimizer.name, config.clipping.name) == (
        "synthetic", "basic", "adam", "none")
    assert config.model.lstm_units == 64 and config.tracking.experiment_name == "bilstm-exp"
    assert config.tracking.registered_model_name == "bilstm-sentiment"


def test_flatten_gives_dotted_keys():
    flat = flatten(to_dict(validate(compose(["model=stacked"]))))
    assert flat["model.layer_sizes"] == [64, 32]
    assert flat["optimizer.schedule.name"] == "constant"
    assert "model.lstm_units" not in flat  # stacked has layer_sizes instead


BAD = [
    (["model.lstm_units=0"], "model.lstm_units", "> 0"),
    (["model.lstm_units=-3"], "model.lstm_units", "> 0"),
    (["model.dropout=1.0"], "model.dropout", "[0, 1)"),
    (["model.dropout=-0.1"], "model.dropout", "[0, 1)"),
    (["model.recurrent_dropout=1.5"], "model.recurrent_dropout", "[0, 1)"),
    (["model=stacked", "model.layer_sizes=[64,0]"], "model.layer_sizes", "> 0"),
    (["model=stacked", "model.layer_sizes=[]"], "model.layer_sizes", "at least one"),
    (["model.merge_mode=max"], "model.merge_mode", "concat, sum, ave, mul"),
    (["model.cell=rnn"], "model.cell", "lstm, gru"),
    (["model.lstm_units=abc"], "model.lstm_units", "type"),
    (["+model.lstm_unit=64"], "model.lstm_unit", "unknown key"),
    (["clipping=norm", "clipping.threshold=-1"], "clipping.threshold", "> 0"),
    (["clipping=value", "clipping.threshold=0"], "clipping.threshold", "> 0"),
    (["clipping.threshold=1.0"], "clipping.threshold", "clipping=none"),
    (["training.batch_size=0"], "training.batch_size", "> 0"),
    (["training.epochs=0"], "training.epochs", "> 0"),
    (["data.max_length=0"], "data.max_length", "> 0"),
    (["data.max_samples=0"], "data.max_samples", "> 0"),
    (["data.vocab_size=2"], "data.vocab_size", "> 2"),
    (["data.padding=left"], "data.padding", "bucket, max"),
    (["data.val_fraction=0.7"], "data.val_fraction", "(0, 0.5)"),
    (["optimizer.learning_rate=0"], "optimizer.learning_rate", "finite value > 0"),
    (["optimizer.schedule.name=step"], "optimizer.schedule.name", "constant, cosine, exponential"),
    (["data=file"], "data.path", "required"),
    (["tracking.experiment_name= "], "tracking.experiment_name", "empty"),
    (["seed=-1"], "seed", "non-negative"),
    (["optimizer.learning_rate=inf"], "optimizer.learning_rate", "finite"),
    (["tracking.registered_model_name=team/model"], "tracking.registered_model_name", "without '/'"),
    (["clipping.name=clipnorm"], "clipping.name", "none, norm, value, global_norm"),
    (["model=transformer"], "cannot compose conf/ with model=transformer", "available: attention, basic"),
]


@pytest.mark.parametrize("overrides,key,allowed", BAD, ids=[" ".join(o) for o, _, _ in BAD])
def test_bad_values_name_the_key_and_what_is_allowed(overrides, key, allowed):
    with pytest.raises(ConfigError) as caught:
        validate(compose(overrides))
    message = str(caught.value)
    assert message.startswith(key + ":"), message
    assert allowed in message and "Fix:" in message, message


def test_unknown_top_level_key_is_refused():
    cfg = compose([])
    OmegaConf.set_struct(cfg, False)
    cfg.trainnig = {"epochs": 1}
    with pytest.raises(ConfigError, match="trainnig: unknown top-level key"):
        validate(cfg)


def test_validation_does_not_import_tensorflow():
    code = ("import sys; from bilstm_exp.config.compose import compose; from bilstm_exp.config.schema import validate; "
            "validate(compose(['model=attention'])); "
            "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------- schema-first conf/


def test_options_are_the_schemas_and_each_schema_names_its_option():
    for group in GROUPS:
        assert options(group) == sorted(SCHEMAS[group]), f"conf/{group}/ and config.SCHEMAS disagree"
        if len(set(SCHEMAS[group].values())) > 1:  # one schema per option: its default name is the option
            assert all(schema_defaults(group, o)["name"] == o for o in SCHEMAS[group]), group


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_each_yaml_extends_its_schema_and_holds_only_what_differs(group, option):
    """A default lives in one place: the dataclass. A YAML may not repeat it."""
    own = yaml.safe_load((CONF_DIR / group / f"{option}.yaml").read_text()) or {}
    assert own.pop("defaults") == [f"/schema/{group}/{option}@_here_"]
    defaults = schema_defaults(group, option)
    repeated = sorted(key for key, value in own.items() if defaults.get(key, object()) == value)
    unknown = sorted(set(own) - set(defaults))
    assert not repeated and not unknown, f"conf/{group}/{option}.yaml: repeats {repeated}, unknown {unknown}"
    composed = OmegaConf.to_container(compose([f"{group}={option}"])[group])
    assert composed == {**defaults, **own}


WIDE = "defaults:\n  - /schema/model/basic@_here_\n\nlstm_units: 96\n"  # a user's own option of a packaged group


def test_a_project_conf_overrides_a_packaged_default_and_adds_an_option(tmp_path, monkeypatch):
    """In a folder with conf/, the project's configs come first and the packaged ones fill in the rest;
    in a folder without one, every command runs on the packaged defaults."""
    model = tmp_path / "project" / "conf" / "model"
    model.mkdir(parents=True)
    (model / "basic.yaml").write_text("defaults:\n  - /schema/model/basic@_here_\n\nlstm_units: 8\n")
    (model / "wide.yaml").write_text(WIDE)
    (tmp_path / "empty").mkdir()

    def help_in(folder: Path) -> str:
        return subprocess.run([sys.executable, "-m", "bilstm_exp", "--help"], cwd=folder, capture_output=True,
                              text=True, timeout=SUBPROCESS_S, check=True).stdout

    assert "model: attention, basic, stacked, unidirectional, wide\n" in help_in(tmp_path / "project")
    assert "model: attention, basic, stacked, unidirectional\n" in help_in(tmp_path / "empty")
    monkeypatch.chdir(tmp_path / "project")
    assert validate(compose([])).model.lstm_units == 8  # the project's basic.yaml
    assert validate(compose(["model=wide"])).model.lstm_units == 96
    assert validate(compose(["model=attention"])).model.attention_units == 64  # packaged, untouched
    monkeypatch.chdir(tmp_path / "empty")
    assert validate(compose([])).model.lstm_units == 64


def test_dvc_exp_run_composes_a_project_conf_over_the_packaged_one(tmp_path):
    """DVC composes the configs itself (hydra.enabled, config_dir conf), without importing bilstm_exp:
    the schemas and the packaged configs reach it through the Hydra plugin modules
    hydra_plugins.bilstm_exp_schemas and hydra_plugins.bilstm_exp_searchpath. The project's conf/
    holds one option of its own and nothing else."""
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}

    def sh(*args):
        return subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, check=True)

    (tmp_path / "conf" / "model").mkdir(parents=True)
    (tmp_path / "conf" / "model" / "wide.yaml").write_text(WIDE)
    sh("git", "init", "-q")
    sh("git", "config", "user.email", "tests@example.com")
    sh("git", "config", "user.name", "tests")
    dvc = str(bin_dir / "dvc")
    sh(dvc, "init", "-q")
    sh(dvc, "config", "hydra.enabled", "true")
    stage = "import yaml; open('units.txt', 'w').write(str(yaml.safe_load(open('params.yaml'))['model']['lstm_units']))"
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(
        {"stages": {"show": {"cmd": f'python -c "{stage}"', "params": ["model"], "outs": ["units.txt"]}}}))
    (tmp_path / "params.yaml").write_text(OmegaConf.to_yaml(compose([])))
    sh("git", "add", "-A")
    sh("git", "commit", "-q", "-m", "conf")
    sh(dvc, "exp", "run", "-S", "model=wide", "-S", "clipping=norm")
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    expected = compose(["model=wide", "clipping=norm"], conf_dir=tmp_path / "conf")
    assert params == OmegaConf.to_container(expected, resolve=True)
    assert params["model"]["lstm_units"] == 96 and params["clipping"]["threshold"] == 1.0
    assert (tmp_path / "units.txt").read_text() == "96"
    validate(params)


SECRET_NAME = "hunter2-name-token"


@pytest.mark.parametrize("command,args,files", [
    (["-m", "bilstm_exp"], ["tracking.experiment_name=exp-${oc.env:API_TOKEN}"], {}),
    # a sweep: refused before its callback creates the experiment and the parent run
    (["-m", "bilstm_exp"], ["-m", "seed=1,2", "tracking.registered_model_name=${oc.env:API_TOKEN}"], {}),
    # in a project's conf/ file, through another key, composed for DVC
    (["-m", "bilstm_exp.cli.main", "compose-params"], [], {"conf/tracking/local.yaml": (
        "defaults:\n  - /schema/tracking/local@_here_\n\ntracking_uri: ${oc.env:API_TOKEN}\n"
        "experiment_name: runs-of-${tracking.tracking_uri}\n")}),
], ids=["experiment-name", "model-name-in-a-sweep", "project-conf-via-another-key"])
def test_a_name_from_the_environment_is_refused_before_anything_is_written(tmp_path, command, args, files):
    """MLflow stores names as they are (experiments, models, versions, aliases): a secret there could
    never be masked, so an environment interpolation in a name stops the command up front."""
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    out = subprocess.run([sys.executable, *command, *args], cwd=tmp_path, capture_output=True, text=True,
                         timeout=SUBPROCESS_S, env={**os.environ, "API_TOKEN": SECRET_NAME})
    assert out.returncode == 2, out.stderr[-2000:]
    [line] = out.stderr.strip().splitlines()
    assert "takes its value from the environment" in line and "Fix: write the name itself" in line
    assert SECRET_NAME not in out.stdout + out.stderr
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.relative_to(tmp_path).as_posix() not in files]
    assert written == []  # no store, no params.yaml, no outputs/


def test_a_bad_value_of_a_plain_run_is_refused_before_hydra_makes_its_output_folder(tmp_path):
    """A plain run's config is validated in the pre-flight: one line, exit 2, and no outputs/ folder of a run
    that never ran. Hydra's own flags (``--cfg job`` prints the config as given) are left to Hydra."""
    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "bilstm_exp", *args], cwd=tmp_path, capture_output=True,
                              text=True, timeout=SUBPROCESS_S)

    out = cli("model.lstm_units=0")
    assert out.returncode == 2, out.stderr[-2000:]
    [line] = out.stderr.strip().splitlines()
    assert line.startswith("bilstm-exp: error: model.lstm_units: must be > 0") and "Fix:" in line
    assert list(tmp_path.iterdir()) == []  # no outputs/runs/<date>/<time>, no store
    shown = cli("--cfg", "job", "model.lstm_units=0")
    assert shown.returncode == 0 and "lstm_units: 0" in shown.stdout, shown.stderr[-2000:]


def test_validation_opens_no_file_and_a_run_checks_its_vector_file_before_anything_else(tmp_path):
    """validate() reads the config only; the missing word-vector file stops the run in its pre-flight,
    with the same message, before a store exists (and before TensorFlow: tests/test_embeddings.py)."""
    config = validate(compose(["model.pretrained_embeddings=missing.txt"]))
    assert config.model.pretrained_embeddings == "missing.txt"
    out = subprocess.run([sys.executable, "-m", "bilstm_exp", "model.pretrained_embeddings=missing.txt"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=SUBPROCESS_S)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "model.pretrained_embeddings: 'missing.txt': no such file" in out.stderr and "Fix:" in out.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_the_champion_follows_the_monitor_in_a_copy_and_the_groups_given_stay_as_they_were():
    from bilstm_exp.config.run_schema import TrackingConfig, TrainingConfig
    from bilstm_exp.config.schema import with_champion

    tracking, training = TrackingConfig(), TrainingConfig(monitor="val/accuracy")
    resolved = with_champion(tracking, training)
    assert (resolved.champion_metric, resolved.champion_greater_is_better) == ("val/accuracy", True)
    assert (tracking.champion_metric, tracking.champion_greater_is_better) == (None, None)
    own = with_champion(TrackingConfig(champion_metric="test/loss"), training)
    assert (own.champion_metric, own.champion_greater_is_better) == ("test/loss", False)
    config = validate(compose(["training.monitor=val/auc"]))
    assert (config.tracking.champion_metric, config.tracking.champion_greater_is_better) == ("val/auc", True)


def test_env_refs_is_a_declared_field_that_the_recorded_config_leaves_out(monkeypatch):
    import dataclasses

    monkeypatch.setenv("SOME_URI", "sqlite:///elsewhere.db")
    config = validate(compose(["tracking.tracking_uri=${oc.env:SOME_URI}"]))
    assert "env_refs" in {f.name for f in dataclasses.fields(config)}
    assert config.env_refs == {"tracking.tracking_uri": "${oc.env:SOME_URI}"}
    assert "env_refs" not in to_dict(config)
