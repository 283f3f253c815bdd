"""Every option of every group composes and validates; bad values fail with clear messages."""

from __future__ import annotations

import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from bilstm_exp import config as cfg_mod
from bilstm_exp.cli import CONF_DIR, compose
from bilstm_exp.config import ConfigError, validate

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
    flat = cfg_mod.flatten(cfg_mod.to_dict(validate(compose(["model=stacked"]))))
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
    code = ("import sys; from bilstm_exp.cli import compose; from bilstm_exp.config import validate; "
            "validate(compose(['model=attention'])); "
            "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
