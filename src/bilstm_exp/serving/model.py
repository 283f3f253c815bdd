"""The registered model: raw text in, probability and label out (an MLflow pyfunc).

``mlflow.pyfunc.load_model(uri).predict(["a fine film", "dull"])`` or a DataFrame with a
``text`` column returns a DataFrame with ``probability`` (of the positive class for two
classes, of the predicted class otherwise) and ``label`` (the class name).

An input that is not a non-empty text (``""``, whitespace, ``null``, a number, or the ``"None"`` or
``"5"`` that MLflow's ``{"inputs": ...}`` parsing makes of a JSON null or number) is refused with an
``MlflowException(error_code=INVALID_PARAMETER_VALUE)`` naming it: `mlflow models serve` answers
HTTP 400 with that message, ``bilstm-exp predict`` prints it; no confident label for no text.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

from bilstm_exp.data.batching import right_padded
from bilstm_exp.data.vocabulary import Vocabulary

BATCH = 256
COLUMNS = pd.Index(["probability", "label"])  # of every output frame (an Index is immutable: shared safely)


def invalid_input(message: str) -> Exception:
    """The error a bad request gets: MLflow's scoring server maps INVALID_PARAMETER_VALUE to HTTP 400."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def texts_of(model_input: Any) -> list[str]:
    """Accept a DataFrame with a ``text`` column, a Series, a list/array of strings or one string;
    refuse anything that is not a non-empty text (:func:`invalid_input`)."""
    if isinstance(model_input, pd.DataFrame):
        columns = list(model_input.columns)  # a list: a lookup in a fresh frame's Index builds a hash table
        if "text" not in columns and columns != [0]:  # [0]: a plain list, made a frame by MLflow's schema check
            raise invalid_input(f"input DataFrame needs a 'text' column; it has {columns}")
        column = columns.index("text") if "text" in columns else 0
        # one column (what MLflow's schema check passes on): to_numpy, not a Series built per call (~0.1 ms)
        model_input = (model_input.to_numpy(dtype=object)[:, 0] if len(columns) == 1
                       else model_input.iloc[:, column]).tolist()
    if isinstance(model_input, str):
        model_input = [model_input]
    if isinstance(model_input, dict) and "text" in model_input:
        model_input = model_input["text"]
    if model_input is None or isinstance(model_input, (int, float, bool)):
        model_input = [model_input]
    texts = list(model_input)
    for index, text in enumerate(texts):
        if isinstance(text, str) and text.strip() and not _cast_non_text(text):
            continue
        if isinstance(text, str) and text.strip():  # MLflow's "inputs" parsing turned null or a number into text
            raise invalid_input(f"input {index + 1} of {len(texts)} is {text!r}, not a text (a JSON null or number "
                                "arrives as such a string): there is nothing to classify. Send non-empty strings, "
                                "e.g. {\"inputs\": [\"a fine film\"]}")
        what = "empty or only whitespace" if isinstance(text, str) else (
            "null" if text is None or (isinstance(text, float) and text != text)
            else f"not a text but {type(text).__name__} {text!r}")
        raise invalid_input(f"input {index + 1} of {len(texts)} is {what}: there is nothing to classify. "
                            "Send non-empty strings, e.g. {\"inputs\": [\"a fine film\"]}")
    return [str(t) for t in texts]


def _cast_non_text(text: str) -> bool:
    """``"None"``, ``"nan"`` or a bare number: what the scoring server's ``{"inputs": [...]}`` parsing
    makes of a JSON null or number when it casts the input to the signature's string type."""
    stripped = text.strip()
    if stripped in ("None", "nan", "NaN", "null"):
        return True
    try:
        float(stripped)
    except ValueError:
        return False
    return True


LENGTH_MULTIPLE = 16  # padded lengths are multiples of this: few shapes for a compiled kernel to compile


def pad_right(sequences: list[np.ndarray]) -> np.ndarray:
    """Right-pad to the longest sequence rounded up to a multiple of :data:`LENGTH_MULTIPLE` (masks
    stay cuDNN-compatible; the padding is masked, so results do not change, while a compiled
    recurrent kernel sees a bounded set of lengths instead of one per batch)."""
    longest = max(len(s) for s in sequences)
    return right_padded(sequences, max(LENGTH_MULTIPLE, -(-longest // LENGTH_MULTIPLE) * LENGTH_MULTIPLE))


class TextClassifier(mlflow.pyfunc.PythonModel):
    """Tokenises with the run's vocabulary, pads, and runs the Keras model in batches."""

    def load_context(self, context) -> None:
        import keras

        import bilstm_exp.models.layers  # noqa: F401  (registers the custom attention layer)

        meta = json.loads(Path(context.artifacts["meta"]).read_text())
        self.setup(keras.saving.load_model(context.artifacts["keras_model"], compile=False),
                   Vocabulary.from_json(Path(context.artifacts["vocab"]).read_text()), meta)

    def save(self, folder: Path) -> dict[str, str]:
        """Write the model's files; returns the pyfunc ``artifacts`` mapping (name -> path)."""
        folder.mkdir(parents=True, exist_ok=True)
        paths = {"keras_model": folder / "model.keras", "vocab": folder / "vocab.json", "meta": folder / "meta.json"}
        self.model.save(paths["keras_model"])
        paths["vocab"].write_text(self.vocab.to_json())
        paths["meta"].write_text(json.dumps({"class_names": self.class_names, "max_length": self.max_length,
                                             "truncating": self.truncating}))
        return {name: str(path) for name, path in paths.items()}

    @classmethod
    def load(cls, folder: Path) -> TextClassifier:
        """Read what :meth:`save` wrote."""
        import keras

        import bilstm_exp.models.layers  # noqa: F401  (registers the custom attention layer)

        return cls().setup(keras.saving.load_model(folder / "model.keras", compile=False),
                           Vocabulary.from_json((folder / "vocab.json").read_text()),
                           json.loads((folder / "meta.json").read_text()))

    def setup(self, model, vocab: Vocabulary, meta: dict[str, Any]) -> TextClassifier:
        self.model, self.vocab = model, vocab
        self.class_names = meta["class_names"]
        self.max_length, self.truncating = meta["max_length"], meta["truncating"]
        self._forward = None
        return self

    def forward(self, ids: np.ndarray) -> np.ndarray:
        """The model's inference pass on padded token ids (``model(ids, training=False)``, what
        ``predict_on_batch`` computes), as one graph traced once for any batch size and length: a call
        skips Keras's predict machinery and TensorFlow's per-call binding of arguments to a trace (about
        0.25 ms of one text's 1.7 ms before)."""
        import tensorflow as tf

        if self._forward is None:
            function = tf.function(lambda token_ids: self.model(token_ids, training=False))
            self._forward = function.get_concrete_function(tf.TensorSpec([None, None], tf.int32))
        # _call_flat: the call without binding arguments to the traced signature (as optimizer_step does)
        return self._forward._call_flat([tf.constant(ids, tf.int32)], self._forward.captured_inputs).numpy()

    def probabilities(self, texts: list[str]) -> np.ndarray:
        """(n, num_classes) class probabilities."""
        chunks = []
        for start in range(0, len(texts), BATCH):
            ids = self.vocab.encode_batch(texts[start:start + BATCH], self.max_length, self.truncating)
            chunks.append(np.asarray(self.forward(pad_right(ids)), dtype=np.float64))
        probs = np.concatenate(chunks) if chunks else np.zeros((0, 1))
        if probs.shape[1] == 1:
            return np.concatenate([1.0 - probs, probs], axis=1)
        return probs / probs.sum(axis=1, keepdims=True)  # float32 softmax sums to 1 only roughly

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        texts = texts_of(model_input)
        if not texts:
            return pd.DataFrame({"probability": [], "label": []})
        probs = self.probabilities(texts)
        ids = probs.argmax(axis=1)
        score = probs[:, 1] if len(self.class_names) == 2 else probs.max(axis=1)
        frame = pd.DataFrame({0: score, 1: [self.class_names[i] for i in ids]}, copy=False)
        frame.columns = COLUMNS  # named after: string keys make pandas infer a string Index on every call
        return frame


# MLflow reads predict's signature on every call (inspect.signature, through the wrapper MLflow puts around
# predict); stored once, inspect returns it instead of unwrapping and parsing again (~0.03 ms of one text).
TextClassifier.predict.__signature__ = inspect.signature(TextClassifier.predict)
