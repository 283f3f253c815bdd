"""Your own architectures, optimizers and data sources, without forking: finding and importing plugins.

A plugin is a Python module that registers something when it is imported: an architecture
(``models.architectures.register``), an optimizer (``models.optim.register``) or a data source
(``data.sources.register``), each with its schema dataclass (``schema=``). There are two ways to
name one, the conventions of pip-installed plugins and of a project's own code:

* an installed package declares an entry point in one of :data:`GROUPS`, in its pyproject.toml::

      [project.entry-points."bilstm_exp.architectures"]
      wide = "my_models.wide"

* a project lists modules in the top-level ``plugins:`` key of its config (``conf/config.yaml``,
  or ``+plugins=[my_models.wide]`` on the command line); they are imported from the folder the
  command runs in, so ``my_models/wide.py`` beside ``conf/`` needs no install.

``config.schema.validate`` calls :func:`load` before it reads the groups, so every command that
validates a config (a run, a sweep job, a DVC stage, ``compose-params``) sees the plugins. A plugin
that fails to import stops the command in one line that names it and the fix (exit 2).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterable
from pathlib import Path

from bilstm_exp.errors import ConfigError

GROUPS = ("bilstm_exp.architectures", "bilstm_exp.optimizers", "bilstm_exp.data_sources")
_installed_loaded = False


def load(modules: Iterable[str] = (), root: Path | None = None) -> None:
    """Import the installed plugins (once per process), then each module named in the config."""
    load_installed()
    modules = list(modules)
    if not modules:
        return
    folder = str((root or Path.cwd()).resolve())
    if folder not in sys.path:  # a console script (bilstm-exp, a DVC stage) does not put its folder there
        sys.path.insert(0, folder)
    for name in modules:
        _import_listed(name)


def load_installed() -> None:
    """Import every entry point of :data:`GROUPS` that an installed package declares."""
    global _installed_loaded
    if _installed_loaded:
        return
    from importlib.metadata import entry_points

    for group in GROUPS:
        for entry in entry_points(group=group):
            try:
                entry.load()
            except Exception as error:  # noqa: BLE001  (foreign code: any failure is one line)
                package = f"package {entry.dist.name}" if entry.dist else "an installed package"
                raise ConfigError(f"plugin {entry.name!r} ({entry.value}, entry point {group} of {package}) failed "
                                  f"to import: {_one_line(error)}. Fix: install what it needs or upgrade it, "
                                  f"or remove it (pip uninstall {entry.dist.name if entry.dist else '...'})") from None
    _installed_loaded = True


def _import_listed(name: str) -> None:
    if not isinstance(name, str) or not name.replace(".", "").replace("_", "").isalnum():
        raise ConfigError(f"plugins: {name!r} is not a module name. Fix: list modules by their dotted name, "
                          "e.g. plugins: [my_models.wide] for my_models/wide.py")
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name and (name == error.name or name.startswith(error.name + ".")):  # the plugin, not its imports
            raise ConfigError(f"plugins: no module {name!r} in {Path.cwd()} or the installed packages. Fix: run "
                              f"in the project root, or correct the name (my_models.wide for my_models/wide.py)"
                              ) from None
        raise _failed(name, error) from None
    except Exception as error:  # noqa: BLE001  (the project's own code: any failure is one line)
        raise _failed(name, error) from None


def _failed(name: str, error: BaseException) -> ConfigError:
    return ConfigError(f"plugin {name!r} (listed in plugins:) failed to import: {_one_line(error)}. Fix: correct "
                       f"the module (python -c 'import {name}' shows the traceback) or remove it from plugins:")


def _one_line(error: BaseException) -> str:
    """``ModuleNotFoundError: No module named 'x'``, or the error's first line and where it was raised."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if isinstance(error, SyntaxError):  # its text already says where: "invalid syntax (wide.py, line 3)"
        return f"{type(error).__name__}: {text}"
    frame = error.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    where = f" ({Path(frame.tb_frame.f_code.co_filename).name}, line {frame.tb_lineno})" if frame else ""
    return f"{type(error).__name__}: {text}{where}" if text else f"{type(error).__name__}{where}"
