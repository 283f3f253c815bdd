"""Quiet by default: what the libraries print is silenced in one place, unless verbose is asked for.

Every entry point (``python -m bilstm_exp``, ``bilstm-exp ...``, the DVC stages) calls :func:`setup`
first, before TensorFlow or MLflow is imported; a run calls it again with its validated
``training.log_level``. ``quiet`` (the default) silences:

* TensorFlow's C++ logs: ``TF_CPP_MIN_LOG_LEVEL=3`` (set before TensorFlow is first imported), and
  the absl lines its import prints regardless of that variable ("All log messages before
  absl::InitializeLog() ...", "oneDNN custom operations are on ..."), filtered from stderr while
  ``tensorflow``/``keras`` are imported (any other line printed then is passed through);
* Python warnings raised from TensorFlow, Keras and absl, TensorFlow's Python logger (tf.function
  retracing warnings in sweeps) and absl's; the INFO lines of gensim (loading word vectors) and of
  matplotlib ("generated new fontManager", its first import);
* MLflow: INFO messages (``MLFLOW_LOGGING_LEVEL=WARNING``), the "Downloading artifacts" progress
  bars (``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false``), the registry's "Successfully registered
  model" / "Created version" lines and the CloudPickle warning of ``log_model``.

Keras progress (one line per epoch when stdout is not a terminal), this project's own lines,
warnings and errors are never silenced. ``verbose`` (``training.log_level=verbose``, or
``BILSTM_EXP_LOG_LEVEL=verbose`` for every command) leaves the libraries and the environment as
they are.

Layer 0: no TensorFlow, no MLflow, nothing from this package is imported here.
"""

from __future__ import annotations

import importlib.abc
import logging
import os
import re
import sys
import tempfile
import warnings
from typing import Any

ENV = "BILSTM_EXP_LOG_LEVEL"
LEVELS = ("quiet", "verbose")

QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "MLFLOW_LOGGING_LEVEL": "WARNING",
             "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
# gensim (word vectors) logs INFO lines, matplotlib "generated new fontManager": Hydra's job logging shows INFO
QUIET_LOGGERS = {"tensorflow": logging.ERROR, "absl": logging.ERROR, "h5py": logging.ERROR,
                 "gensim": logging.WARNING, "smart_open": logging.WARNING, "matplotlib": logging.WARNING}
# What TensorFlow's import prints to stderr whatever TF_CPP_MIN_LOG_LEVEL says (absl's pre-init lines)
IMPORT_NOISE = re.compile(r"All log messages before absl::InitializeLog|^[IW]\d{4} [\d:.]+ +\d+ \S+\] "
                          r"|^To enable the following instructions:")
# What MLflow prints on its own stream (eprint or its log handler) that says nothing the summary does not
MLFLOW_NOISE = re.compile(r"Successfully registered model|Registered model .* already exists|Created version '"
                          r"|Passing a Python object as `python_model`|Waiting up to \d+ seconds for model version")
WARNING_FILTERS = [  # (message regex, module regex) for warnings.filterwarnings("ignore", ...)
    (r"", r"(tensorflow|keras|tf_keras|absl|google\.protobuf)(\.|$)"),
]
# Shown warnings dropped in quiet mode (some libraries reset the filters around their own warnings, so the
# display is filtered too)
NOISY_WARNING_FILE = re.compile(r"[/\\\\](tensorflow|keras|tf_keras|absl)[/\\\\]")
FILTERED_IMPORTS = ("tensorflow", "keras")

_state: dict[str, Any] = {"level": None, "env": {}, "loggers": {}, "filters": [], "hook": None, "show": None}


def level_from_env() -> str:
    value = os.environ.get(ENV, "").strip().lower()
    if value and value not in LEVELS:
        print(f"bilstm-exp: warning: {ENV}={value!r} is not one of {', '.join(LEVELS)}; using quiet",
              file=sys.stderr, flush=True)
        return "quiet"
    return value or "quiet"


def setup(level: str | None = None) -> str:
    """Apply ``level`` (quiet or verbose); verbose when either it or ``BILSTM_EXP_LOG_LEVEL`` says so.
    Idempotent; call it again with the run's configured level. Returns the level in force."""
    wanted = "verbose" if "verbose" in (level, level_from_env()) else "quiet"
    if wanted == _state["level"]:
        return wanted
    if wanted == "quiet":
        _quiet()
    else:
        _loud()
    _state["level"] = wanted
    return wanted


def is_quiet() -> bool:
    return _state["level"] == "quiet"


def _quiet() -> None:
    for key, value in QUIET_ENV.items():
        _state["env"].setdefault(key, os.environ.get(key))
        os.environ[key] = value
    for name, level in QUIET_LOGGERS.items():
        logger = logging.getLogger(name)
        _state["loggers"].setdefault(name, logger.level)
        logger.setLevel(level)
    if "mlflow" in sys.modules:  # imported already: MLflow read MLFLOW_LOGGING_LEVEL at its import
        logging.getLogger("mlflow").setLevel(logging.WARNING)
    for message, module in WARNING_FILTERS:
        warnings.filterwarnings("ignore", message=message, module=module)
        _state["filters"].append(warnings.filters[0])
    if _state["show"] is None:
        _state["show"] = warnings.showwarning
        warnings.showwarning = _showwarning
    if _state["hook"] is None:
        _state["hook"] = _ImportHook()
        sys.meta_path.insert(0, _state["hook"])
    _filter_mlflow_stream()


def _loud() -> None:
    for key, value in _state["env"].items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    _state["env"] = {}
    for name, level in _state["loggers"].items():
        logging.getLogger(name).setLevel(level)
    _state["loggers"] = {}
    if "mlflow" in sys.modules:
        logging.getLogger("mlflow").setLevel(os.environ.get("MLFLOW_LOGGING_LEVEL", "INFO").upper())
    for entry in _state["filters"]:
        if entry in warnings.filters:
            warnings.filters.remove(entry)
    getattr(warnings, "_filters_mutated", lambda: None)()  # what filterwarnings calls after a change
    _state["filters"] = []
    if _state["show"] is not None:
        warnings.showwarning, _state["show"] = _state["show"], None
    if _state["hook"] is not None:
        sys.meta_path.remove(_state["hook"])
        _state["hook"] = None


def _showwarning(message, category, filename, lineno, file=None, line=None) -> None:
    if is_quiet() and NOISY_WARNING_FILE.search(str(filename)):
        return
    (_state["show"] or warnings._showwarning_orig)(message, category, filename, lineno, file, line)  # noqa: SLF001


# --------------------------------------------------------------------------- MLflow's own stream


def _filter_mlflow_stream() -> None:
    """Drop MLflow's noise lines (see MLFLOW_NOISE) from the stream its eprint and log handler write to.
    Runs when ``mlflow.utils.logging_utils`` is imported (the import hook calls it) or now if it was."""
    module = sys.modules.get("mlflow.utils.logging_utils")
    stream = getattr(module, "MLFLOW_LOGGING_STREAM", None)
    if stream is None or "write" in vars(stream):
        return
    dropped = {"last": False}
    original = type(stream).write

    def write(text: str) -> None:
        if is_quiet():
            if MLFLOW_NOISE.search(text):
                dropped["last"] = True
                return
            if dropped["last"] and text == "\n":  # print() writes the line end on its own
                dropped["last"] = False
                return
        dropped["last"] = False
        original(stream, text)

    stream.write = write


# --------------------------------------------------------------------------- TensorFlow's import


class _WrappedLoader(importlib.abc.Loader):
    """A module's real loader, with something done around ``exec_module`` by a subclass."""

    def __init__(self, loader):
        self.loader = loader

    def __getattr__(self, name: str):
        return getattr(self.loader, name)

    def create_module(self, spec):
        return self.loader.create_module(spec)


class _FilteredLoader(_WrappedLoader):
    """Wraps the real loader of ``tensorflow`` / ``keras``: stderr (file descriptor 2, where the
    C++ libraries write) goes to a temporary file during the import; afterwards every line that is
    not IMPORT_NOISE is written to the real stderr."""

    depth = 0

    def exec_module(self, module) -> None:
        if _FilteredLoader.depth or not is_quiet():
            self.loader.exec_module(module)
            return
        _FilteredLoader.depth += 1
        sys.stderr.flush()
        saved = os.dup(2)
        with tempfile.TemporaryFile(mode="w+b") as capture:
            os.dup2(capture.fileno(), 2)
            try:
                self.loader.exec_module(module)
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)
                _FilteredLoader.depth -= 1
                capture.seek(0)
                kept = [line for line in capture.read().decode("utf-8", "replace").splitlines(keepends=True)
                        if not IMPORT_NOISE.search(line)]
                if kept:
                    sys.stderr.write("".join(kept))
                    sys.stderr.flush()


class _ImportHook(importlib.abc.MetaPathFinder):
    """Filters stderr while TensorFlow/Keras are imported; quiets MLflow's stream once it is imported."""

    def find_spec(self, fullname, path, target=None):
        if fullname not in FILTERED_IMPORTS and fullname != "mlflow.utils.logging_utils":
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None:
            return spec
        spec.loader = _FilteredLoader(spec.loader) if fullname in FILTERED_IMPORTS else _AfterLoader(spec.loader)
        return spec


class _AfterLoader(_WrappedLoader):
    """Wraps MLflow's logging module: its stream is quieted right after it is imported."""

    def exec_module(self, module) -> None:
        self.loader.exec_module(module)  # the import system has put the module in sys.modules already
        _filter_mlflow_stream()
