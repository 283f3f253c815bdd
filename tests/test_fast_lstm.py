"""FastLSTM computes what keras.layers.LSTM computes, with the same weights.

Outputs, gradients (against TF autodiff of the Keras layer) and weights after Adam steps, for
every mask shape (none, right padding of varied lengths with a row of length 1, holes),
direction, return_sequences and return_state; save/load both ways; the fallback conditions.
Tiny shapes; no timing.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from bilstm_exp.models import optimizer_step  # noqa: E402
from bilstm_exp.models.fast_lstm import FastLSTM, pad_batches, recurrent_layer  # noqa: E402
from bilstm_exp.models.optimizer_step import xla_apply  # noqa: E402

B, T, D, H = 4, 7, 5, 3
VOCAB = 30
ON_CPU = not tf.config.list_logical_devices("GPU")  # with a GPU visible, FastLSTM is Keras's (cuDNN) path


def _masks():
    right = np.ones((B, T), bool)
    for row, length in enumerate((T, 4, 1, 6)):  # varied lengths, one row of length 1
        right[row, length:] = False
    holes = np.ones((B, T), bool)
    holes[0, 2] = holes[1, 0] = holes[2, 3:5] = holes[3, 6] = False
    return {"no_padding": None, "right_padding": right, "holes": holes}


def _pair(**kwargs):
    ref, fast = keras.layers.LSTM(H, **kwargs), FastLSTM(H, **kwargs)
    ref.build((None, None, D))
    fast.build((None, None, D))
    for f, r in zip(fast.weights, ref.weights):
        f.assign(r)
    return ref, fast


def _outputs_and_grads(layer, x, mask, training=False):
    weights = tf.constant(np.linspace(-1.0, 1.0, H * 2), tf.float32)  # loss weights on each output
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = layer(x, mask=None if mask is None else tf.constant(mask), training=training)
        outs = list(out) if isinstance(out, (list, tuple)) else [out]
        loss = sum(tf.reduce_sum(tf.cast(o, tf.float32) * weights[: o.shape[-1]] * (k + 1))
                   for k, o in enumerate(outs))
    grads = tape.gradient(loss, [x, *layer.trainable_weights])
    return [o.numpy() for o in outs], [g.numpy() for g in grads]


def _max_diff(a, b):
    return max(float(np.max(np.abs(u - v))) for u, v in zip(a, b))


@pytest.mark.parametrize("go_backwards", [False, True], ids=["forward", "backwards"])
@pytest.mark.parametrize("return_sequences", [False, True], ids=["last", "sequences"])
@pytest.mark.parametrize("return_state", [False, True], ids=["no_state", "state"])
@pytest.mark.parametrize("zero_output", [False, True], ids=["carry_output", "zero_output"])
def test_outputs_and_gradients_match_keras(go_backwards, return_sequences, return_state, zero_output):
    # zero_output_for_mask: masked steps output zeros (Bidirectional sets it when returning sequences)
    ref, fast = _pair(go_backwards=go_backwards, return_sequences=return_sequences, return_state=return_state,
                      zero_output_for_mask=zero_output)
    assert fast.uses_fast_path == ON_CPU
    x = tf.constant(np.random.default_rng(0).normal(size=(B, T, D)).astype("float32"))
    for name, mask in _masks().items():
        ref_out, ref_grads = _outputs_and_grads(ref, x, mask)
        out, grads = _outputs_and_grads(fast, x, mask)
        assert [o.shape for o in out] == [o.shape for o in ref_out], name
        assert _max_diff(out, ref_out) < 1e-6, name
        assert _max_diff(grads, ref_grads) < 1e-5, name


def test_input_dropout_uses_the_same_mask_as_keras():
    ref, fast = _pair(dropout=0.5, seed=3, return_sequences=True)
    assert fast.uses_fast_path == ON_CPU
    x = tf.constant(np.random.default_rng(1).normal(size=(B, T, D)).astype("float32"))
    mask = _masks()["right_padding"]
    ref_out, ref_grads = _outputs_and_grads(ref, x, mask, training=True)
    out, grads = _outputs_and_grads(fast, x, mask, training=True)
    assert _max_diff(out, ref_out) < 1e-6
    assert _max_diff(grads, ref_grads) < 1e-5
    inference, _ = _outputs_and_grads(fast, x, mask, training=False)  # no dropout at inference
    assert _max_diff(inference, _outputs_and_grads(ref, x, mask)[0]) < 1e-6


@pytest.mark.skipif(not ON_CPU, reason="the XLA loops run on a CPU only")
def test_inference_of_a_served_layer_runs_the_loop_without_the_backward_record():
    """training=False on a layer nobody trains (no pad_batch_to) traces only the forward-only loop;
    training, or validation of a model being trained (pad_batch_to set), the recording loop. Outputs
    and gradients of the inference path equal Keras's: test_outputs_and_gradients_match_keras."""
    _, fast = _pair(return_sequences=True)
    x = tf.constant(np.random.default_rng(0).normal(size=(B, T, D)).astype("float32"))

    def loops(training):
        graph = tf.function(lambda x: fast(x, training=training)).get_concrete_function(x).graph
        names = " ".join(function.signature.name for function in graph.as_graph_def().library.function)
        return {loop for loop in ("_inference_loop", "_forward_loop") if loop in names}

    assert loops(False) == {"_inference_loop"}
    assert loops(True) == {"_forward_loop"}
    fast.pad_batch_to = B
    assert loops(False) == {"_forward_loop"}


def _model(layer_cls, sequences: bool):
    """Embedding(mask_zero) -> Bidirectional(layer_cls) -> Dense, as the project's models are."""
    tokens = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(VOCAB, D, mask_zero=True, name="embedding")(tokens)
    if sequences:  # the attention model's use: the sequence and both directions' final states
        seq, h_fw, _, h_bw, _ = keras.layers.Bidirectional(
            layer_cls(H, return_sequences=True, return_state=True, name="lstm"), name="bidirectional")(x)
        pooled = keras.layers.GlobalAveragePooling1D()(seq)
        features = keras.layers.Concatenate()([pooled, h_fw, h_bw])
    else:
        features = keras.layers.Bidirectional(layer_cls(H, name="lstm"), name="bidirectional")(x)
    return keras.Model(tokens, keras.layers.Dense(1, activation="sigmoid", name="output")(features))


def _tokens(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(1, VOCAB, size=(B, T)).astype("int32")
    for row, length in enumerate((T, 4, 1, 6)):
        x[row, length:] = 0
    return x, rng.integers(0, 2, size=(B, 1)).astype("float32")


@pytest.mark.parametrize("sequences, pad_to", [(False, None), (True, None), (True, 3)],
                         ids=["final_state", "sequences_and_states", "sequences_and_states_batch_padded"])
def test_bidirectional_training_matches_keras(sequences, pad_to):
    """pad_to: the loops run on the batch padded to a multiple of 3 rows (4 -> 6), as training sets it."""
    keras.utils.set_random_seed(0)
    ref = _model(keras.layers.LSTM, sequences)
    fast = _model(FastLSTM, sequences)
    assert pad_batches(fast, pad_to) == 2  # the two directions of the Bidirectional
    fast.set_weights(ref.get_weights())
    assert [v.path for v in fast.weights] == [v.path for v in ref.weights]
    assert all(layer.uses_fast_path == ON_CPU for layer in
               (fast.get_layer("bidirectional").forward_layer, fast.get_layer("bidirectional").backward_layer))
    x, y = _tokens()

    def grads(model):  # in a tf.function, as Keras trains
        @tf.function
        def step(x, y):
            with tf.GradientTape() as tape:
                loss = keras.losses.binary_crossentropy(y, model(x, training=True))
            return [tf.convert_to_tensor(g) for g in tape.gradient(loss, model.trainable_variables)]
        return [g.numpy() for g in step(x, y)]

    assert _max_diff(grads(fast), grads(ref)) < 1e-5
    for model in (ref, fast):
        model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="binary_crossentropy")
        for _ in range(3):
            model.train_on_batch(x, y)
    assert _max_diff(fast.get_weights(), ref.get_weights()) < 1e-5
    assert _max_diff([fast.predict(x, verbose=0)], [ref.predict(x, verbose=0)]) < 1e-6


def test_keras_files_load_both_ways(tmp_path):
    keras.utils.set_random_seed(0)
    x, _ = _tokens(1)
    ref, fast = _model(keras.layers.LSTM, True), _model(FastLSTM, True)
    ref.save(tmp_path / "keras_lstm.keras")
    fast.save(tmp_path / "fast_lstm.keras")

    loaded = keras.models.load_model(tmp_path / "fast_lstm.keras")  # registered: no custom_objects
    layer = loaded.get_layer("bidirectional").forward_layer
    assert type(layer) is FastLSTM and layer.uses_fast_path == ON_CPU
    np.testing.assert_allclose(loaded.predict(x, verbose=0), fast.predict(x, verbose=0), atol=1e-6)

    fast.load_weights(tmp_path / "keras_lstm.keras")  # Keras LSTM weights -> FastLSTM model
    np.testing.assert_allclose(fast.predict(x, verbose=0), ref.predict(x, verbose=0), atol=1e-6)
    other = _model(keras.layers.LSTM, True)
    other.load_weights(tmp_path / "fast_lstm.keras")  # FastLSTM weights -> Keras LSTM model
    np.testing.assert_allclose(other.predict(x, verbose=0), loaded.predict(x, verbose=0), atol=1e-6)


def test_mixed_precision_computes_in_float32_and_returns_the_compute_dtype():
    ref, fast = _pair(return_sequences=True, return_state=True)
    mixed = FastLSTM(H, return_sequences=True, return_state=True, dtype="mixed_float16")
    mixed.build((None, None, D))
    for m, r in zip(mixed.weights, ref.weights):
        m.assign(r)
    assert mixed.uses_fast_path == ON_CPU and mixed.cell.kernel.dtype == "float32"
    x = np.random.default_rng(2).normal(size=(B, T, D)).astype("float16")
    mask = _masks()["right_padding"]
    out, grads = _outputs_and_grads(mixed, tf.constant(x), mask)
    ref_out, ref_grads = _outputs_and_grads(ref, tf.constant(x.astype("float32")), mask)
    assert all(o.dtype == np.float16 for o in out)
    assert _max_diff([o.astype("float32") for o in out], ref_out) < 1e-2
    assert _max_diff([g.astype("float32") for g in grads], ref_grads) < 5e-2


@pytest.mark.parametrize("kwargs", [
    {"recurrent_dropout": 0.2}, {"activation": "relu"}, {"recurrent_activation": "hard_sigmoid"},
    {"use_bias": False}, {"unroll": True}, {"use_cudnn": True},
], ids=lambda k: next(iter(k)))
def test_configurations_the_fast_path_does_not_cover_take_keras_path(kwargs):
    layer = FastLSTM(H, **kwargs)
    assert not layer.uses_fast_path
    assert FastLSTM.from_config(layer.get_config()).get_config() == layer.get_config()


def test_fallbacks_compute_what_keras_computes():
    x = tf.constant(np.random.default_rng(3).normal(size=(B, T, D)).astype("float32"))
    ref, fast = _pair(activation="relu", return_sequences=True)
    assert not fast.uses_fast_path
    assert _max_diff([fast(x)], [ref(x)]) < 1e-6
    ref, fast = _pair(return_state=True)  # an initial state: Keras's path, same result
    assert fast.uses_fast_path == ON_CPU
    state = [tf.ones((B, H)) * 0.1, tf.ones((B, H)) * -0.2]
    assert _max_diff(fast(x, initial_state=state), ref(x, initial_state=state)) < 1e-6
    stateful = FastLSTM(H, stateful=True)
    assert not stateful.uses_fast_path


def test_recurrent_layer_picks_the_kernel():
    assert type(recurrent_layer("lstm", 4)) is FastLSTM
    assert type(recurrent_layer("lstm", 4, kernel="keras")) is keras.layers.LSTM
    assert type(recurrent_layer("gru", 4)) is keras.layers.GRU
    assert recurrent_layer("lstm", 4, return_sequences=True, name="x").return_sequences
    with pytest.raises(ValueError, match="kernel must be one of fast, keras"):
        recurrent_layer("lstm", 4, kernel="cudnn")
    with pytest.raises(ValueError, match="kind must be lstm or gru"):
        recurrent_layer("rnn", 4)


def test_layers_module_reexports_fast_lstm():
    from bilstm_exp.models import layers

    assert layers.FastLSTM is FastLSTM
    assert keras.saving.get_registered_object("bilstm_exp>FastLSTM") is FastLSTM


class _XlaOptimizerModel(keras.Model):
    """A custom train_step whose optimizer update runs through xla_apply."""

    def train_step(self, data):
        x, y = data[0], data[1]
        with tf.GradientTape() as tape:
            loss = self.compute_loss(x=x, y=y, y_pred=self(x, training=True), training=True)
        xla_apply(self.optimizer, tape.gradient(loss, self.trainable_variables), self.trainable_variables)
        return {}


def test_xla_optimizer_step_gives_the_same_weights():
    keras.utils.set_random_seed(0)
    plain = _model(FastLSTM, False)
    jitted = _XlaOptimizerModel(plain.inputs, plain.outputs, name="xla_optimizer_model")
    reference = _model(FastLSTM, False)
    reference.set_weights(plain.get_weights())
    x, y = _tokens(2)
    for model in (reference, jitted):
        model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="binary_crossentropy")
        for _ in range(3):
            model.train_on_batch(x, y)
    assert int(jitted.optimizer.iterations) == 3
    assert _max_diff(jitted.get_weights(), reference.get_weights()) < 1e-6


def test_a_second_model_of_one_shape_shares_the_traced_optimizer_step_and_updates_only_its_own_weights():
    """A fold after the first: a new model and a new optimizer of the same shapes call the step traced for
    the first model (the compiled programs are reused), on their own variables: the first model's weights
    and step count stay as they were, the second's equal those of Keras's own (unjitted) update."""
    keras.utils.set_random_seed(0)
    first = _XlaOptimizerModel(*_io(_model(FastLSTM, False)), name="first_fold")
    second = _XlaOptimizerModel(*_io(_model(FastLSTM, False)), name="second_fold")
    reference = _model(FastLSTM, False)
    reference.set_weights(second.get_weights())
    x, y = _tokens(3)
    first.compile(optimizer=keras.optimizers.Adam(1e-2), loss="binary_crossentropy")
    first.train_on_batch(x, y)
    first_weights = first.get_weights()
    before = dict(optimizer_step._PROGRAMS)
    for model in (reference, second):
        model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="binary_crossentropy")
        for _ in range(3):
            model.train_on_batch(x, y)
    assert optimizer_step._PROGRAMS == before  # nothing traced for the second model
    assert int(first.optimizer.iterations) == 1 and int(second.optimizer.iterations) == 3
    assert _max_diff(first.get_weights(), first_weights) == 0.0
    assert _max_diff(second.get_weights(), reference.get_weights()) < 1e-6
    del first  # a finished fold: its variables go; the step traced with them still serves the next model
    gc.collect()
    third = _XlaOptimizerModel(*_io(_model(FastLSTM, False)), name="third_fold")
    third.compile(optimizer=keras.optimizers.Adam(1e-2), loss="binary_crossentropy")
    third.train_on_batch(x, y)
    assert int(third.optimizer.iterations) == 1 and optimizer_step._PROGRAMS == before


def test_another_optimizer_configuration_gets_its_own_step():
    """The key holds what the traced update depends on: Adam's betas change the program, a numeric
    learning rate (a variable, read when the update runs) does not."""
    keras.utils.set_random_seed(0)
    model = _model(FastLSTM, False)
    grads = [tf.zeros_like(v) for v in model.trainable_variables]

    def key(optimizer):
        optimizer.build(model.trainable_variables)
        return optimizer_step.program_key(optimizer, grads, model.trainable_variables)

    assert key(keras.optimizers.Adam(1e-2)) == key(keras.optimizers.Adam(1e-3))
    assert key(keras.optimizers.Adam(1e-2)) != key(keras.optimizers.Adam(1e-2, beta_1=0.8))
    assert key(keras.optimizers.Adam(1e-2)) != key(keras.optimizers.SGD(1e-2))


def _io(model):
    return model.inputs, model.outputs


COMPILE_COUNT = """
import os, sys
import numpy as np, keras
from bilstm_exp.models import build as models
from bilstm_exp.models.fast_lstm import FastLSTM, pad_batches
keras.utils.set_random_seed(0)
for _ in range(int(sys.argv[2])):  # a new model, optimizer and train function each time, as each fold gets
    tokens = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(50, 8, mask_zero=True)(tokens)
    model = models.TelemetryModel(tokens, keras.layers.Dense(1, activation="sigmoid")(
        keras.layers.Bidirectional(FastLSTM(6))(x)))
    model.compile(optimizer="adam", loss="binary_crossentropy")
    model.xla_optimizer_step = True
    pad_batches(model, int(sys.argv[1]) or None)
    rng = np.random.default_rng(0)
    for batch, length in [(8, 16), (5, 16), (3, 16), (8, 32), (6, 32)]:
        model.train_on_batch(rng.integers(1, 50, (batch, length)).astype("int32"),
                             rng.integers(0, 2, (batch, 1)).astype("float32"))
    print("programs", len(os.listdir(sys.argv[3])))  # in the persistent cache once this model trained
"""


@pytest.fixture(scope="module")
def compile_counts(tmp_path_factory) -> dict[int, list[int]]:
    """{pad_to: programs in XLA's persistent cache after each model}: three models of one shape padded to
    multiples of 8 (the folds of a cross-validation) in one process, one model unpadded in another. The
    cache writes one file per program it compiles: the first epoch's compile time, counted."""
    counts = {}
    for pad_to, models in ((8, 3), (0, 1)):
        cache = tmp_path_factory.mktemp("xla")
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
               "TF_XLA_FLAGS": f"--tf_xla_persistent_cache_directory={cache}"}
        done = subprocess.run([sys.executable, "-c", COMPILE_COUNT, str(pad_to), str(models), str(cache)],
                              capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        counts[pad_to] = [int(line.split()[1]) for line in done.stdout.splitlines() if line.startswith("programs ")]
    return counts


@pytest.mark.slow  # two processes of about 10 s (XLA compiling counted): `make test` runs them, not the inner loop
@pytest.mark.skipif(not ON_CPU, reason="the XLA loops run on a CPU only")
@pytest.mark.parametrize("pad_to, models, programs", [(8, 1, 2 * 2 + 3), (0, 1, 5 * 2 + 3), (8, 3, 2 * 2 + 3)],
                         ids=["padded", "unpadded", "three_models_compile_as_one"])
def test_xla_compiles_one_loop_per_length_for_both_directions_and_every_batch_size(compile_counts, pad_to, models,
                                                                                   programs):
    """Five batches (8, 5, 3 rows at length 16; 8, 6 at length 32) padded to multiples of 8: a forward and a
    backward loop per length, shared by both directions; unpadded, a pair per batch shape. The optimizer
    update compiles once per power of two of embedding-gradient rows (64, 128, 256). Three models of one
    shape in one process (the folds of a cross-validation) compile what one does."""
    assert compile_counts[pad_to][models - 1] == programs
