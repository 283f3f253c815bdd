"""A fast LSTM for CPUs: ``FastLSTM``, a drop-in subclass of ``keras.layers.LSTM``.

Why: on a CPU, Keras's LSTM runs one small matmul plus a dozen element-wise ops per time step
and direction, forward and backward; at batch 32 and length 150 that is ~16,400 TF ops per train
step, and per-op overhead, not arithmetic, sets the speed. ``FastLSTM`` computes exactly the same
function with far fewer, larger operations:

1. the input projection ``x_t W + b`` for all time steps at once, as one matmul in TF's own
   (oneDNN) kernel, outside XLA (XLA on CPU runs large matmuls 2-3x slower);
2. the time loop of one direction as one XLA-compiled ``tf.while_loop`` (each step's matmul and
   element-wise work fused, no per-op executor cost); inside ``Bidirectional`` each direction is
   its own loop, so TF's inter-op pool runs the two directions on two cores;
3. a hand-written backward pass (``tf.custom_gradient``): a second XLA loop carries only the
   hidden/cell-state gradients and writes the gate gradients ``dZ``; the recurrent-kernel gradient
   is then one matmul ``H_prev^T dZ`` after the loop, and ``dW``, ``db``, ``dx`` come from autodiff
   of the hoisted projection (again TF kernels).

It holds the same variables as ``keras.layers.LSTM`` (``lstm_cell/kernel``, ``recurrent_kernel``,
``bias``; gate order i, f, c, o), takes the same arguments and has the same config, so weights
move between the two both ways and a model only needs ``FastLSTM`` registered to load
(``import bilstm_exp.models.layers`` does that).

When the fast path is taken (``layer.uses_fast_path``): TensorFlow backend, no GPU visible,
``activation="tanh"``, ``recurrent_activation="sigmoid"``, ``use_bias=True``,
``recurrent_dropout == 0``, not ``stateful``, not ``unroll``, ``use_cudnn`` not forced to True;
and per call: no ``initial_state``. Anything else calls
``keras.layers.LSTM.call`` unchanged, so on a GPU the cuDNN kernel is exactly Keras's.

Semantics on the fast path equal Keras's generic path: any boolean mask (right padding from
``Embedding(mask_zero=True)``, but also holes): a masked step carries ``h`` and ``c`` over and
outputs the previous output (zeros with ``zero_output_for_mask``, which ``Bidirectional`` sets
when it returns sequences); ``go_backwards`` returns the sequence in processing (reversed)
order, as ``Bidirectional`` expects; input ``dropout`` uses the cell's per-sequence dropout mask
(the same random stream as Keras's). Mixed precision: inputs arrive in the compute dtype
(e.g. float16); the fast path computes in float32 (variables read without autocasting) and casts
its outputs back to the compute dtype.

XLA compiles each loop once per distinct (time steps, batch) shape, and that compile time shows
in the first epoch. With length bucketing every bucket has a full-batch shape, a smaller last
batch, and a validation and a test batch of other sizes: four shapes per bucket. So: ``pad_batch_to``
(set by training to ``training.batch_size``, not saved with the model) pads the loops' batch
dimension up to a multiple of it, one shape per bucket serving training, validation and test (the
padded rows are zeros, masked, and sliced off); both directions share one compiled loop (the
direction is a tensor argument); the loops are traced once, whatever static shapes the caller's
graph knew. The default run's first epoch: 17.4 s before, 6.8 s after (benchmarks/first_epoch.md);
once compiled, padding costs 0-7% (benchmarks/batch_padding.md). Inference (``training=False``) on a
model that is not being trained (no ``pad_batch_to``: a served model) runs a third loop, the forward pass
without the per-step record only the backward pass reads. Every later model in the process
(the folds of a cross-validation) finds these loops compiled; another process loads them from the
cache of ``bilstm_exp.models.xla_cache``, which a run enables once TensorFlow is configured
(``training.runner.configure_tensorflow``: after a multi-worker strategy, which must come first).
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras.src.backend import AutocastScope  # no public alias in Keras 3.15

KERNELS = ("fast", "keras")


# ----------------------------------------------------------------------------- the loops (XLA)

def _num_steps(x):
    return x.shape[0] if x.shape[0] is not None else tf.shape(x)[0]


def _gate_scale(units: int):
    """Per column of the gates (i, f, c, o): 0.5 for the sigmoid gates, 1 for the candidate's tanh."""
    half = tf.fill([units], 0.5)
    return tf.concat([half, half, tf.ones([units]), half], 0)


def _cell_forward(z, c):
    # All four activations as one tanh over the whole (B, 4h) block: sigmoid(x) = 0.5 * tanh(x / 2) + 0.5,
    # and the candidate's tanh(x) is the same expression with scale 1 and no shift. XLA's CPU code for the
    # four column slices activated one by one was slower: the forward loop by 1.04-1.11x, inference by
    # 1.19-1.48x, the backward (with its own change) by 1.04-1.19x (benchmarks/cell_activations.md).
    scale = _gate_scale(c.shape[-1])
    gates = tf.tanh(z * scale) * scale + (1.0 - scale)  # shift: 0.5 for the sigmoids, 0 for the tanh
    i, f, g, o = tf.split(gates, 4, axis=-1)
    c_new = f * c + i * g
    tc = tf.tanh(c_new)
    return gates, c_new, tc, o * tc


def _cell_backward(dh, dc, gates, c_prev, tc, m):
    """Gradients of one step given dL/dh_t and dL/dc_t (after masking): -> dz, dc_prev (cell part)."""
    i, f, g, o = tf.split(gates, 4, axis=-1)
    if m is not None:
        dh, dc = dh * m, dc * m
    dc = dc + dh * o * (1.0 - tc * tc)
    # d(gates)/dz over the whole block, as _cell_forward computes it: scale^2 - (gates - shift)^2 is
    # a (1 - a) for a sigmoid gate and 1 - a^2 for the tanh
    scale = _gate_scale(tc.shape[-1])
    slope = scale * scale - tf.square(gates - (1.0 - scale))
    dz = tf.concat([dc * g, dc * c_prev, dc * i, dh * tc], -1) * slope
    return dz, dc * f


def _forward_loop(xw, U, maskf, reverse, with_sequence):
    """xw (T, B, 4h) projected inputs in natural time order; U (h, 4h); maskf (T, B, 1) float or None.

    Processing step p reads time index t = T-1-p when ``reverse`` (a boolean tensor: both directions
    share one compiled loop per shape). Returns the final (h, c), the
    per-time-step gates G, c_{t-1}, h_{t-1}, tanh(c_t) (indexed by t) for the backward pass and,
    when ``with_sequence``, the outputs Y in processing order.
    """
    T = _num_steps(xw)
    units = U.shape[0]
    zeros = tf.zeros(tf.stack([tf.shape(xw)[1], units]), xw.dtype)
    shape_g = tf.TensorShape([xw.shape[1], 4 * units])
    shape_h = tf.TensorShape([xw.shape[1], units])
    arrays = [tf.TensorArray(xw.dtype, size=T, element_shape=s)
              for s in (shape_g, shape_h, shape_h, shape_h)]
    if with_sequence:
        arrays.append(tf.TensorArray(xw.dtype, size=T, element_shape=shape_h))

    def body(p, h, c, *arrays):
        t = tf.where(reverse, T - 1 - p, p)
        gates, c_new, tc, h_new = _cell_forward(tf.gather(xw, t) + tf.matmul(h, U), c)
        G, C, H, TC = arrays[:4]
        G, C, H, TC = G.write(t, gates), C.write(t, c), H.write(t, h), TC.write(t, tc)
        if maskf is not None:
            m = tf.gather(maskf, t) > 0
            c_new, h_new = tf.where(m, c_new, c), tf.where(m, h_new, h)
        out = [G, C, H, TC]
        if with_sequence:
            out.append(arrays[4].write(p, h_new))
        return (p + 1, h_new, c_new, *out)

    result = tf.while_loop(lambda p, *_: p < T, body, (tf.constant(0), zeros, zeros, *arrays),
                           maximum_iterations=T)
    return (result[1], result[2], *[a.stack() for a in result[3:]])


def _backward_loop(dh, dc, dY, U, G, C, TC, maskf, reverse):
    """Walks the processing order backwards; dY (T, B, h) output gradients in processing order or
    None. Returns dZ (T, B, 4h), the gradient of the projected inputs, indexed by time."""
    T = _num_steps(G)
    dZ = tf.TensorArray(G.dtype, size=T, element_shape=G.shape[1:])
    U_t = tf.transpose(U)  # once, not in every step's matmul

    def body(j, dh, dc, dZ):
        p = T - 1 - j
        t = tf.where(reverse, T - 1 - p, p)
        if dY is not None:
            dh = dh + tf.gather(dY, p)
        m = None if maskf is None else tf.gather(maskf, t)
        dz, dc_prev = _cell_backward(dh, dc, tf.gather(G, t), tf.gather(C, t), tf.gather(TC, t), m)
        dh_prev = tf.matmul(dz, U_t)
        if m is not None:  # a masked step passed h and c through unchanged
            dh_prev, dc_prev = dh_prev + dh * (1.0 - m), dc_prev + dc * (1.0 - m)
        return j + 1, dh_prev, dc_prev, dZ.write(t, dz)

    result = tf.while_loop(lambda j, *_: j < T, body, (tf.constant(0), dh, dc, dZ), maximum_iterations=T)
    return result[3].stack()


def _inference_loop(xw, U, maskf, reverse, with_sequence):
    """:func:`_forward_loop` without the record the backward pass reads: returns the final (h, c) and,
    when ``with_sequence``, Y; the same arithmetic per step, and no per-step writes of G, C, H, TC."""
    T = _num_steps(xw)
    zeros = tf.zeros(tf.stack([tf.shape(xw)[1], U.shape[0]]), xw.dtype)
    outputs = [tf.TensorArray(xw.dtype, size=T, element_shape=[xw.shape[1], U.shape[0]])] if with_sequence else []

    def body(p, h, c, *outputs):
        t = tf.where(reverse, T - 1 - p, p)
        _, c_new, _, h_new = _cell_forward(tf.gather(xw, t) + tf.matmul(h, U), c)
        if maskf is not None:
            m = tf.gather(maskf, t) > 0
            c_new, h_new = tf.where(m, c_new, c), tf.where(m, h_new, h)
        return (p + 1, h_new, c_new, *[Y.write(p, h_new) for Y in outputs])

    result = tf.while_loop(lambda p, *_: p < T, body, (tf.constant(0), zeros, zeros, *outputs), maximum_iterations=T)
    return (result[1], result[2], *[Y.stack() for Y in result[3:]])


_FORWARD = tf.function(_forward_loop, jit_compile=True)
_INFERENCE = tf.function(_inference_loop, jit_compile=True)
_BACKWARD = tf.function(_backward_loop, jit_compile=True)


def any_length(x):
    """``x`` with its static time and batch sizes erased (an identity when it runs). The loops are then
    traced once, whatever shapes the calling graph knew (Keras traces its first train step with the
    first batch's shape): XLA's compile cache, keyed by the traced function and the shapes at run
    time, hits for every later batch of a shape seen before."""
    if x is None or tf.executing_eagerly():
        return x
    shape = [None] * (x.shape.rank - 1) + [x.shape[-1]] if x.shape.rank > 1 else [None]  # keeps the features
    return tf.raw_ops.PlaceholderWithDefault(input=x, shape=shape)


def lstm_direction(xw, U, maskf, reverse: bool, with_sequence: bool, record: bool = True):
    """One LSTM direction from zero state on hoisted projections ``xw`` (T, B, 4h), float32.

    Returns ``(h_T, c_T, Y)`` with ``Y`` (T, B, h) the outputs in processing order, or
    ``(h_T, c_T)`` without ``with_sequence``. Differentiable w.r.t. ``xw`` and ``U``. ``record=False``
    (inference) runs the loop without the per-step record the backward pass reads; a gradient asked
    of such a call recomputes that record first, so it is still exact, only slower.
    """

    reverse = tf.constant(reverse)  # a tensor, not a Python bool: one XLA compile serves both directions

    @tf.custom_gradient
    def run(xw, U):
        # stop_gradient: the tape must not record the loop itself (this op's gradient is `grad`);
        # eagerly, recording would ask TF for the loop's own gradient, which XLA cannot provide.
        args = (any_length(tf.stop_gradient(xw)), tf.stop_gradient(U), any_length(maskf), reverse, with_sequence)
        if record:
            h, c, G, C, H, TC, *Y = _FORWARD(*args)
            saved = (G, C, H, TC)
        else:
            (h, c, *Y), saved = _INFERENCE(*args), None

        def grad(dh, dc, *dY):
            G, C, H, TC = saved if saved is not None else _FORWARD(*args)[2:6]
            dh = tf.zeros_like(h) if dh is None else dh
            dc = tf.zeros_like(c) if dc is None else dc
            dy = dY[0] if dY else None
            if dy is None and with_sequence:
                dy = tf.zeros_like(Y[0])
            dZ = _BACKWARD(any_length(dh), any_length(dc), any_length(dy), U, G, C, TC, any_length(maskf),
                           reverse)
            units = U.shape[0]
            dU = tf.matmul(tf.reshape(H, [-1, units]), tf.reshape(dZ, [-1, 4 * units]), transpose_a=True)
            return dZ, dU

        return (h, c, *Y), grad

    return run(xw, U)


# ----------------------------------------------------------------------------- the layer

def _gpu_visible() -> bool:
    return bool(tf.config.list_logical_devices("GPU"))


@keras.saving.register_keras_serializable(package="bilstm_exp")
class FastLSTM(keras.layers.LSTM):
    """``keras.layers.LSTM`` with a fused, XLA-compiled CPU path; see the module docstring.

    Same arguments, variables and results as ``keras.layers.LSTM``. ``uses_fast_path`` says
    whether calls without ``initial_state`` take the fast path.
    """

    pad_batch_to: int | None = None  # see the module docstring; an attribute, not part of the config

    @property
    def uses_fast_path(self) -> bool:
        cell = self.cell
        return (
            keras.backend.backend() == "tensorflow"
            and cell.activation is keras.activations.tanh
            and cell.recurrent_activation is keras.activations.sigmoid
            and cell.use_bias
            and not cell.recurrent_dropout
            and not self.stateful
            and not self.unroll
            and self.use_cudnn != True  # noqa: E712  (True means: cuDNN or raise, Keras decides)
            and not _gpu_visible()
        )

    def call(self, sequences, initial_state=None, mask=None, training=False):
        if initial_state is not None or not self.uses_fast_path:
            return super().call(sequences, initial_state=initial_state, mask=mask, training=training)
        if isinstance(mask, (list, tuple)):
            mask = mask[0]
        cell = self.cell
        # The same dropout-mask bookkeeping as keras RNN.call (same random stream).
        self._maybe_config_dropout_masks(cell, sequences[:, 0, :], [None])
        x = tf.cast(sequences, tf.float32)
        if training and 0.0 < cell.dropout < 1.0:
            x = x * tf.expand_dims(tf.cast(cell.get_dropout_mask(sequences[:, 0, :]), tf.float32), 1)
        self._maybe_reset_dropout_masks(cell)

        with AutocastScope(None):  # float32 weights even under a mixed-precision policy
            kernel = tf.cast(cell.kernel.value, tf.float32)
            recurrent = tf.cast(cell.recurrent_kernel.value, tf.float32)
            bias = tf.cast(cell.bias.value, tf.float32)
        steps, batch = tf.shape(x)[1], tf.shape(x)[0]
        xt = tf.transpose(x, [1, 0, 2])  # (T, B, d)
        xw = tf.matmul(tf.reshape(xt, [-1, x.shape[-1]]), kernel) + bias  # one matmul for all steps
        xw = tf.reshape(xw, tf.stack([steps, batch, 4 * self.units]))
        maskf = None
        if mask is not None:
            maskf = tf.expand_dims(tf.transpose(tf.cast(mask, tf.float32)), -1)  # (T, B, 1)
        if self.pad_batch_to:  # one compiled shape per time length (module docstring)
            quantum = self.pad_batch_to
            extra = (quantum - batch % quantum) % quantum
            xw = tf.pad(xw, [[0, 0], [0, extra], [0, 0]])  # without a mask the padded rows run and are dropped
            maskf = None if maskf is None else tf.pad(maskf, [[0, 0], [0, extra], [0, 0]])

        # the backward's record: when training, and in a model being trained (its validation reuses the loops)
        record = bool(self.pad_batch_to) or (training is not None and training is not False)
        h, c, *ys = lstm_direction(xw, recurrent, maskf, bool(self.go_backwards), bool(self.return_sequences),
                                   record=record)
        if self.pad_batch_to:
            h, c, ys = h[:batch], c[:batch], [y[:, :batch] for y in ys]
            maskf = None if maskf is None else maskf[:, :batch]
        if self.return_sequences:
            output = ys[0]  # (T, B, h) in processing order, like Keras's
        else:
            output = h
        if self.zero_output_for_mask and maskf is not None:  # masked steps output zeros, not h
            processed = tf.reverse(maskf, [0]) if self.go_backwards else maskf
            output = output * processed if self.return_sequences else output * processed[-1]
        dtype = self.compute_dtype
        h, c = tf.cast(h, dtype), tf.cast(c, dtype)
        output = tf.cast(tf.transpose(output, [1, 0, 2]) if self.return_sequences else output, dtype)
        if self.return_state:
            return output, h, c
        return output


def pad_batches(model: keras.Layer, batch_size: int | None) -> int:
    """Set ``pad_batch_to`` on every FastLSTM in ``model`` (also inside ``Bidirectional`` and nested
    models); returns how many. ``None`` turns the padding off."""
    found, stack = 0, [model]
    while stack:
        layer = stack.pop()
        if isinstance(layer, FastLSTM):
            layer.pad_batch_to, found = batch_size, found + 1
        stack += [child for name in ("layers", "forward_layer", "backward_layer", "layer")
                  for child in _as_list(getattr(layer, name, None))]
    return found


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value] if isinstance(value, keras.Layer) else []


def recurrent_layer(kind: str, units: int, kernel: str = "fast", **kwargs) -> keras.layers.Layer:
    """A recurrent layer: ``kind`` "lstm" or "gru"; ``kernel`` "fast" (``FastLSTM``: the CPU fast
    path, Keras's own cuDNN path on a GPU) or "keras" (``keras.layers.LSTM``). GRU is always Keras's
    (measured no faster than the LSTM here, so no fast GRU)."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
    if kind == "lstm":
        return (FastLSTM if kernel == "fast" else keras.layers.LSTM)(units, **kwargs)
    if kind == "gru":
        return keras.layers.GRU(units, **kwargs)
    raise ValueError(f"kind must be lstm or gru, got {kind!r}")
