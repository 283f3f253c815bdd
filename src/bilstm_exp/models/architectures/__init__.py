"""Architectures as a registry: ``model.name`` -> schema, builder and FLOP count.

Each module here registers one architecture with :func:`register`:

* its **schema** is the dataclass that ``config.SCHEMAS["model"]`` lists under the same name
  (defaults and validation live there, TensorFlow-free);
* its **builder** ``build(cfg, tokens, embedded, recurrent) -> features`` turns the embedded token
  ids into the feature tensor the classification head reads; ``recurrent(units, name, **kwargs)``
  is the project's one recurrent-layer factory (``models._recurrent``: LSTM or GRU per
  ``model.cell``, dropout, the fused kernels);
* its **FLOP count** ``flops(cfg) -> Flops`` is the analytic forward cost per real token and per
  sample, up to the head (``profiling.forward_flops`` adds the head and the training factor).

Every module of this package is imported (so it registers itself) when the package is: a new
architecture is a new module here, its schema dataclass in config.py (``SCHEMAS["model"]``) and its
YAML in conf/model/ (see the README). ``models.build`` adds the input, the embedding and the head
around the builder. Modules import Keras only inside their builders, so this package loads no
TensorFlow.
"""

import importlib
import pkgutil

from bilstm_exp.models.architectures.registry import (
    REGISTRY,
    Architecture,
    Flops,
    get,
    merged_width,
    recurrent_flops,
    register,
)

__all__ = ["REGISTRY", "Architecture", "Flops", "get", "merged_width", "recurrent_flops", "register"]

for _module in pkgutil.iter_modules(__path__):  # basic, attention, stacked, unidirectional, ...
    if _module.name != "registry":
        importlib.import_module(f"{__name__}.{_module.name}")
