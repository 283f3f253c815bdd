"""`bilstm-exp init [DIR]`: set up bilstm-exp in a project's own repository (as `kedro mlflow init` or
`dvc exp init` do), from the templates in ``bilstm_exp/templates/init/``.

It writes a primary ``conf/config.yaml`` (commented: the packaged groups, ``data=file``), the
project's ``conf/data/file.yaml`` (the data path, a placeholder), a ``dvc.yaml`` whose stages call
the installed ``bilstm-exp prepare|train|evaluate`` and depend on the project's data and ``conf/``
(and on the installed version, through the param ``bilstm_exp_version``), the composed
``params.yaml``, ``data/raw/``, and appends the lines it lacks to ``.gitignore`` and ``.dvcignore``.
With ``.dvc/`` there it turns on DVC's Hydra composition (``dvc exp run -S``) and gives ``dvc plots
show`` the packaged offline page; without git or DVC it says what to run next. It never overwrites a
file without ``--force``: it lists what exists, exits 2 and changes nothing.
"""

from __future__ import annotations

import argparse
from importlib.resources import files
from pathlib import Path

from bilstm_exp import __version__
from bilstm_exp.errors import UserError

TEMPLATES = files("bilstm_exp") / "templates" / "init"
WRITTEN = ("conf/config.yaml", "conf/data/file.yaml", "dvc.yaml")  # from the templates, as they are
PARAMS = "params.yaml"  # composed from the written conf/
APPENDED = {".gitignore": "gitignore", ".dvcignore": "dvcignore"}  # file -> template of the lines it needs
RAW = Path("data/raw")
PLOTS_PAGE = "plots_template.html"  # in .dvc/: the offline page of `dvc plots show` (Vega inlined)
PACKAGED_PLOTS_PAGE = files("bilstm_exp") / "templates" / "dvc_plots" / "index.html"
TRY = (
    ("python -m bilstm_exp data=synthetic training.epochs=2", "a first run on built-in data, in ./mlflow.db"),
    ("python -m bilstm_exp -m model=basic,attention seed=1,2", "a sweep on your data (conf/data/file.yaml)"),
    ("dvc repro", "the pipeline: prepare -> train -> evaluate"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``bilstm-exp init``."""
    parser.description = __doc__.split("\n\n")[1]
    parser.add_argument("dir", nargs="?", default=".", type=Path, help="the repository's root (default: here)")
    parser.add_argument("--force", action="store_true", help="overwrite conf/config.yaml, dvc.yaml, params.yaml ...")


def command(args: argparse.Namespace) -> None:
    root = args.dir
    existing = [name for name in (*WRITTEN, PARAMS, f".dvc/{PLOTS_PAGE}") if (root / name).exists()]
    if existing and not args.force:
        raise UserError(f"{root}: {', '.join(existing)} exist already; nothing was changed. Fix: bilstm-exp init "
                        "--force to overwrite them, or move them away first")
    root.mkdir(parents=True, exist_ok=True)
    _write_and_compose(root)
    (root / RAW).mkdir(parents=True, exist_ok=True)
    added = [name for name, template in APPENDED.items() if _append_missing(root / name, _template(template))]
    dvc_note = _configure_dvc(root)
    print(f"bilstm-exp {__version__}: set up {root.resolve().name}/ with {', '.join(WRITTEN)}, {PARAMS}, "
          f"{RAW}/" + (f"; added lines to {' and '.join(added)}" if added else ""))
    for line in _next_steps(root, dvc_note):
        print(line)


def _write_and_compose(root: Path) -> None:
    """Write the templates and compose params.yaml from them; if composing fails (e.g. a file of the
    project's conf/ is broken), remove what this wrote, so a failed init leaves nothing half-done."""
    from bilstm_exp.stages import params

    created = [root / name for name in (*WRITTEN, PARAMS) if not (root / name).exists()]
    try:
        for name in WRITTEN:
            _write(root / name, _template(name))
        params.compose_params(root, [])  # params.yaml, as `dvc exp run` would compose it
    except BaseException:
        for path in created:
            path.unlink(missing_ok=True)
        raise


def _template(name: str) -> str:
    return (TEMPLATES / name).read_text(encoding="utf-8").replace("@VERSION@", __version__)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _append_missing(path: Path, template: str) -> bool:
    """Append the template's lines that ``path`` lacks (its comment line with them); True if any."""
    have = set(path.read_text(encoding="utf-8").splitlines()) if path.is_file() else set()
    lines = template.splitlines()
    missing = [line for line in lines[1:] if line not in have]
    if not missing:
        return False
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    separator = "" if not text or text.endswith("\n") else "\n"
    path.write_text(text + separator + "\n".join([lines[0], *missing]) + "\n", encoding="utf-8")
    return True


def _configure_dvc(root: Path) -> str | None:
    """Turn on ``dvc exp run``'s Hydra composition of conf/ in .dvc/config, and give ``dvc plots show``
    the offline page (the packaged template, copied to .dvc/); None without .dvc/."""
    if not (root / ".dvc").is_dir():
        return None
    from configobj import ConfigObj  # DVC's own config format and library

    (root / ".dvc" / PLOTS_PAGE).write_bytes(PACKAGED_PLOTS_PAGE.read_bytes())
    parsed = ConfigObj(str(root / ".dvc" / "config"), encoding="utf-8")
    parsed.setdefault("hydra", {}).update({"enabled": "true", "config_dir": "conf", "config_name": "config"})
    parsed.setdefault("plots", {})["html_template"] = PLOTS_PAGE  # relative to .dvc/
    parsed.write()
    return (f"turned on `dvc exp run -S` composing conf/ (.dvc/config: hydra.enabled); `dvc plots show` "
            f"draws offline (.dvc/{PLOTS_PAGE})")


def _next_steps(root: Path, dvc_note: str | None) -> list[str]:
    lines = [f"DVC: {dvc_note}"] if dvc_note else []
    needed = ([] if (root / ".git").exists() else ["git init"]) + (
        [] if dvc_note else ["dvc init", "dvc config hydra.enabled true"])
    if needed:
        lines.append(f"Next, in {root}: {' && '.join(needed)}   (the pipeline and `dvc exp run -S` need them)")
    lines.append(f"Put your labelled texts in {RAW}/ and set data.path in conf/data/file.yaml. Then try:")
    width = max(len(command) for command, _ in TRY)
    lines += [f"  {command:<{width}}   # {what}" for command, what in TRY]
    return lines
