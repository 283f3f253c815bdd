"""Architectures build, train a step and predict; attention masks padding; optimizers get clipping."""

from __future__ import annotations

import shutil
from dataclasses import dataclass

import keras
import numpy as np
import pytest

from bilstm_exp.config.compose import CONF_DIR, compose
from bilstm_exp.config.model_schema import ModelConfig
from bilstm_exp.config.optimizer_schema import CLIPPING_MODES
from bilstm_exp.config.schema import SCHEMAS, validate
from bilstm_exp.data import prepare as data
from bilstm_exp.data import sources
from bilstm_exp.models import architectures, optim
from bilstm_exp.models import build as models
from bilstm_exp.training import profiling
from tests.conftest import tiny

ARCHITECTURES = ["basic", "attention", "stacked", "unidirectional"]


def batch(n=6, length=12, vocab=30, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(2, vocab, size=(n, length)).astype("int32")
    for row in range(n):  # right padding of varying length
        x[row, rng.integers(3, length):] = 0
    return x, rng.integers(0, 2, size=n).astype("int32")


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("num_classes", [2, 3])
def test_each_architecture_trains_a_step_and_predicts_the_right_shape(architecture, num_classes):
    config = validate(compose(tiny(architecture)))
    model = models.build(config.model, vocab_size=30, num_classes=num_classes)
    loss = "binary_crossentropy" if num_classes == 2 else "sparse_categorical_crossentropy"
    model.compile(optimizer="adam", loss=loss)
    x, y = batch()
    y = y % num_classes
    before = [w.copy() for w in model.get_weights()]
    logs = model.train_on_batch(x, y, return_dict=True)
    assert np.isfinite(logs["loss"])
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    out = model.predict_on_batch(x)
    assert out.shape == (6, 1 if num_classes == 2 else num_classes)
    assert np.all((out >= 0) & (out <= 1))


def test_bidirectional_doubles_features_and_merge_modes_apply():
    concat = models.build(validate(compose(tiny("basic"))).model, 30, 2)
    summed = models.build(validate(compose(tiny("basic", "model.merge_mode=sum"))).model, 30, 2)
    uni = models.build(validate(compose(tiny("unidirectional"))).model, 30, 2)
    assert concat.get_layer("bidirectional").output.shape[-1] == 16
    assert summed.get_layer("bidirectional").output.shape[-1] == 8
    assert uni.get_layer("lstm").output.shape[-1] == 8


@pytest.mark.parametrize("architecture, layers", [("basic", 2), ("attention", 2), ("stacked", 4),
                                                  ("unidirectional", 1)])
def test_training_pads_every_fast_lstm_batch_to_the_batch_size(architecture, layers):
    """model.kernel=fast on a CPU: each FastLSTM runs its loops on batches padded to training.batch_size
    (one XLA compile per bucket length, tests/test_fast_lstm.py); Keras's kernel has nothing to pad."""
    from bilstm_exp.models.fast_lstm import FastLSTM, pad_batches
    from bilstm_exp.training import runner as training

    config = validate(compose(tiny(architecture, "model.kernel=fast", "training.batch_size=12")))
    prepared = data.prepare(config.data)
    model = training.compile_model(config, prepared, steps_per_epoch=10)
    fast = [layer for layer in model._flatten_layers() if isinstance(layer, FastLSTM)]
    assert len(fast) == layers and {layer.pad_batch_to for layer in fast} == {12}  # set by compile_model
    assert pad_batches(model, 12) == layers  # the walk finds them all
    keras_kernel = training.compile_model(validate(compose(tiny(architecture))), prepared, steps_per_epoch=10)
    assert pad_batches(keras_kernel, None) == 0


def test_stacked_wires_return_sequences_for_all_but_the_last():
    model = models.build(validate(compose(tiny("stacked", "model.layer_sizes=[8,6,4]"))).model, 30, 2)
    layers = [model.get_layer(f"bidirectional_{i}") for i in range(3)]
    assert [layer.forward_layer.return_sequences for layer in layers] == [True, True, False]
    assert [layer.forward_layer.units for layer in layers] == [8, 6, 4]


def test_gru_cell_is_used_when_configured():
    model = models.build(validate(compose(tiny("attention", "model.cell=gru"))).model, 30, 2)
    assert isinstance(model.get_layer("bidirectional").forward_layer, keras.layers.GRU)


def test_attention_weights_sum_to_one_over_real_tokens_and_are_zero_on_padding():
    model = models.build(validate(compose(tiny("attention"))).model, 30, 2)
    x, _ = batch(n=5, length=15)
    weights = np.asarray(models.attention_model(model).predict_on_batch(x))
    real = x != 0
    assert weights.shape == x.shape
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-5)
    assert np.all(weights[~real] == 0.0)
    assert np.all(weights[real] > 0.0)


def test_models_keep_the_cudnn_compatible_settings():
    model = models.build(validate(compose(tiny("basic"))).model, 30, 2)
    layer = model.get_layer("bidirectional").forward_layer
    assert (layer.activation.__name__, layer.recurrent_activation.__name__) == ("tanh", "sigmoid")
    assert layer.use_bias and not layer.unroll and layer.recurrent_dropout == 0
    assert model.get_layer("embedding").mask_zero


@pytest.mark.parametrize("clipping,argument,threshold", [
    ("norm", "clipnorm", 1.0), ("value", "clipvalue", 0.5), ("global_norm", "global_clipnorm", 1.0)])
def test_each_clipping_setting_reaches_the_optimizer(clipping, argument, threshold):
    config = validate(compose([f"clipping={clipping}"]))
    optimizer = optim.build(config.optimizer, config.clipping, steps_per_epoch=10, epochs=2)
    assert getattr(optimizer, argument) == threshold
    others = {"clipnorm", "clipvalue", "global_clipnorm"} - {argument}
    assert all(getattr(optimizer, other) is None for other in others)


def test_no_clipping_leaves_the_optimizer_unclipped():
    config = validate(compose(["clipping=none"]))
    optimizer = optim.build(config.optimizer, config.clipping, 10, 2)
    assert optimizer.clipnorm is None and optimizer.clipvalue is None and optimizer.global_clipnorm is None


@pytest.mark.parametrize("name,cls", [("adam", keras.optimizers.Adam), ("adamw", keras.optimizers.AdamW),
                                      ("sgd", keras.optimizers.SGD), ("rmsprop", keras.optimizers.RMSprop)])
def test_optimizer_options(name, cls):
    config = validate(compose([f"optimizer={name}"]))
    optimizer = optim.build(config.optimizer, config.clipping, 10, 2)
    assert type(optimizer) is cls
    if name == "sgd":
        assert optimizer.nesterov and optimizer.momentum == 0.9


def test_schedules_warm_up_and_decay():
    config = validate(compose(["optimizer.schedule.name=cosine", "optimizer.schedule.warmup_epochs=1"]))
    schedule = optim.learning_rate(config.optimizer, steps_per_epoch=10, epochs=3)
    rates = [float(schedule(step)) for step in (0, 5, 9, 10, 29)]
    assert rates[0] < rates[1] < rates[2] <= 1e-3 + 1e-9
    assert rates[3] == pytest.approx(1e-3, rel=1e-3) and rates[4] < 1e-4
    config = validate(compose(["optimizer.schedule.name=exponential", "optimizer.schedule.decay_rate=0.5"]))
    schedule = optim.learning_rate(config.optimizer, steps_per_epoch=10, epochs=3)
    assert float(schedule(10)) == pytest.approx(5e-4)
    assert optim.learning_rate(validate(compose([])).optimizer, 10, 3) == 1e-3


# --------------------------------------------------------------------------- registries


def test_registries_agree_with_the_schemas():
    """Every option of conf/model, conf/optimizer and conf/data has a builder, registered with its schema."""
    assert {n: a.schema for n, a in architectures.REGISTRY.items()} == SCHEMAS["model"]
    assert {n: o.schema for n, o in optim.OPTIMIZERS.items()} == SCHEMAS["optimizer"]
    assert {n: sources.get(n).schema for n in sources.names()} == SCHEMAS["data"]
    assert set(optim.CLIP_ARGUMENT) | {"none"} == set(CLIPPING_MODES)
    with pytest.raises(ValueError, match="has no schema"):
        architectures.register("transformer", flops=lambda cfg: None)(lambda *args: None)


@dataclass
class MeanModelConfig(ModelConfig):
    name: str = "mean"  # bag of embeddings: the masked mean of the token vectors


def test_a_new_architecture_is_a_schema_a_registered_builder_and_a_yaml(tmp_path, monkeypatch):
    """The README's recipe, end to end: compose with its YAML, validate, build, train a step, count FLOPs."""
    monkeypatch.setitem(SCHEMAS["model"], "mean", MeanModelConfig)
    monkeypatch.setitem(architectures.REGISTRY, "mean", None)  # removed again after the test

    def flops(cfg):
        width = cfg.embedding_dim
        return architectures.Flops(per_token=width, per_sample=width, features=width)

    @architectures.register("mean", flops=flops)
    def build(cfg, tokens, embedded, recurrent):
        return keras.layers.GlobalAveragePooling1D(name="mean")(embedded)

    shutil.copytree(CONF_DIR, tmp_path / "conf")
    (tmp_path / "conf" / "model" / "mean.yaml").write_text("defaults:\n  - /schema/model/mean@_here_\n")
    config = validate(compose(["model=mean", "model.embedding_dim=8"], conf_dir=tmp_path / "conf"))
    assert isinstance(config.model, MeanModelConfig)
    model = models.build(config.model, vocab_size=30, num_classes=2)
    model.compile(optimizer="adam", loss="binary_crossentropy")
    x, y = batch()
    assert np.isfinite(model.train_on_batch(x, y, return_dict=True)["loss"])
    assert model.get_layer("mean").output.shape[-1] == 8
    # 8 adds per token; per text: 8 for the mean and 2 x 8 x 1 for the sigmoid head, over 10 tokens
    assert profiling.train_flops_per_token(config.model, 2, 10) == pytest.approx(3 * (8 + 24 / 10))
