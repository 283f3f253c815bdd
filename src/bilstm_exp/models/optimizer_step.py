"""The optimizer update as one XLA program, compiled once per process for every model of one shape.

Why: Keras's optimizer update is dozens of small ops per variable (Adam: moments, bias correction, the
sparse embedding gradient); on a CPU their per-op cost is a fixed few ms per train step, and compiled
together they are one launch. But a ``tf.function`` traced for one model captures that model's (and its
optimizer's) variables, and XLA caches a compiled program under the traced function's name: the next
model of a cross-validation, a sweep job in the same process or a repeated run would trace a new
function and compile every program again (about a second each, per embedding-gradient size).

So the traced update is kept per *program key* (optimizer class and configuration, the shapes and
dtypes of the variables, the optimizer's state and the gradients; :func:`program_key`), not per
optimizer object: another model with the same key calls the same traced function with its own
variables in place of the captured ones (:class:`Program`), and XLA's in-process cache, keyed by the
function and the argument shapes, finds the programs already compiled. The captured inputs are mapped
to the variables by position; a trace that captured anything else (a constant of one optimizer, say)
is used by its own optimizer only, as before.
"""

from __future__ import annotations

import collections
import json

import keras
import tensorflow as tf
from keras.src.backend import AutocastScope  # no public alias in Keras 3.15
from tensorflow.python.eager.polymorphic_function import function_type_utils  # how TF itself binds a call

from bilstm_exp.models.fast_lstm import any_length

SHARED = 8  # traced updates kept per process (each holds the variables of the model it was traced with)
_PROGRAMS: collections.OrderedDict[tuple, Program] = collections.OrderedDict()


class Program:
    """A traced update and, for each variable it captured, that variable's position in the state list
    (:func:`state`) it was traced with; ``shareable``: it captured nothing but those variables."""

    def __init__(self, optimizer: keras.optimizers.Optimizer, grads: list, variables: list, traced_state: list):
        fn = tf.function(lambda g: optimizer.apply(g, variables), jit_compile=True)
        self.function = fn.get_concrete_function(grads)
        position = {id(handle): k for k, handle in enumerate(_handles(traced_state))}
        self.slots = [position.get(id(captured)) for captured in self.function.captured_inputs]
        self.shareable = None not in self.slots
        if self.shareable:  # a call marks the traced variables accessed (and fails once they are deleted, when
            self.function._func_graph.variables = []  # their model is): another model's call uses none of them

    def __call__(self, grads: list, state: list) -> None:
        """The update on ``state`` (a list like the traced one: same shapes, same order)."""
        handles = _handles(state)
        captured = [handles[k] for k in self.slots] if self.shareable else self.function.captured_inputs
        bound = function_type_utils.canonicalize_function_inputs((grads,), {}, self.function.function_type)
        self.function._call_flat(self.function.function_type.unpack_inputs(bound), captured)


def xla_apply(optimizer: keras.optimizers.Optimizer, grads, variables) -> None:
    """``optimizer.apply(grads, variables)`` as one XLA cluster (TF backend); see the module docstring.

    Same update rule, same variables; results agree to float32 rounding (XLA may fuse the arithmetic
    in a different order). Meant for a custom ``train_step``: replace
    ``self.optimizer.apply(grads, self.trainable_variables)`` with
    ``xla_apply(self.optimizer, grads, self.trainable_variables)``. An embedding's sparse gradient
    (``tf.IndexedSlices``, one row per token of the batch, so a new shape for every batch shape) gets
    zero rows up to the next power of two: a few compiled updates instead of one per batch shape. A
    zero row adds nothing to any update (Keras sums duplicate rows, and their squares, when it
    densifies): the weights are the same.
    """
    variables = list(variables)
    grads = [_rows_to_power_of_two(g) if isinstance(g, tf.IndexedSlices) else g for g in grads]
    if not optimizer.built:
        optimizer.build(variables)
    current = state(optimizer, variables)
    own = optimizer.__dict__.setdefault("_bilstm_exp_xla_apply", {})  # traces only this optimizer may call
    key = program_key(optimizer, grads, variables)
    program = _PROGRAMS.get(key) or own.get(key)
    if program is None:
        program = Program(optimizer, grads, variables, current)
        (_PROGRAMS if program.shareable else own)[key] = program
        while len(_PROGRAMS) > SHARED:
            _PROGRAMS.popitem(last=False)
    program(grads, current)


def state(optimizer: keras.optimizers.Optimizer, variables: list) -> list:
    """Everything an update reads or writes: the model's variables, then the optimizer's (iterations,
    learning rate, moments), in their own orders (two models of one architecture list them alike)."""
    return [*variables, *optimizer.variables]


def program_key(optimizer: keras.optimizers.Optimizer, grads: list, variables: list) -> tuple:
    """What a traced update depends on: the optimizer's class and configuration (a numeric learning rate
    is a variable, read when the update runs, so its value is left out), each variable's and gradient's
    shape and dtype, and (weight decay) which variables decay: a name-based choice made when tracing."""
    with tf.init_scope():  # the config reads the learning rate's value: eagerly, also while Keras traces
        config = {k: v for k, v in optimizer.get_config().items() if k != "name"}
    if isinstance(config.get("learning_rate"), (int, float)):
        config.pop("learning_rate")
    decays = tuple(optimizer._use_weight_decay(v) for v in variables) if optimizer.weight_decay else ()
    return (type(optimizer).__qualname__, json.dumps(config, sort_keys=True, default=str), decays,
            tuple(_spec(v) for v in state(optimizer, variables)), tuple(_spec(g) for g in grads))


def _spec(value) -> tuple:
    """(kind, shape, dtype) of a variable or gradient; None for a missing gradient."""
    if value is None:
        return (None,)
    if isinstance(value, tf.IndexedSlices):
        return ("slices", tuple(value.values.shape.as_list()[1:]), value.values.dtype.name)
    shape = value.shape.as_list() if isinstance(value.shape, tf.TensorShape) else list(value.shape)
    return (type(value).__name__, tuple(shape), str(value.dtype))


def _handles(variables: list) -> list:
    """The resource handles of (Keras or TF) variables: what a traced function captures."""
    with AutocastScope(None):
        return [v.handle for v in variables]


def _rows_to_power_of_two(grad: tf.IndexedSlices) -> tf.IndexedSlices:
    rows = tf.shape(grad.indices)[0]
    log2 = tf.math.log(tf.cast(tf.maximum(rows, 1), tf.float32)) / tf.math.log(2.0)
    target = tf.bitwise.left_shift(1, tf.cast(tf.math.ceil(log2), tf.int32))
    extra = tf.maximum(target, rows) - rows  # guards float rounding of log2
    values, indices = tf.pad(grad.values, [[0, extra], [0, 0]]), tf.pad(grad.indices, [[0, extra]])
    return tf.IndexedSlices(any_length(values), any_length(indices), grad.dense_shape)
