"""params.yaml, the config the DVC stages read, and the configs it is composed from.

The stages read ``params.yaml``, which is what DVC tracks, never ``conf/`` directly. params.yaml is a
Hydra composition of the configs (the project's own ``conf/``, when it has one, over the packaged
``bilstm_exp/conf``); it records the md5 of both in a comment line. `dvc repro` does not recompose
(treeverse/dvc#10750), so every stage first checks that the configs have not changed since params.yaml
was composed and stops with the command to run when they have. Under `dvc exp run` DVC has just
recomposed params.yaml itself (hydra.enabled in .dvc/config); the stage then writes the record.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import yaml

from bilstm_exp.config.compose import CONF_DIR, CONF_MODULE, USER_CONF, conf_layers
from bilstm_exp.config.schema import ExperimentConfig, validate
from bilstm_exp.errors import ConfigError
from bilstm_exp.stages.outputs import write_text

PARAMS = Path("params.yaml")
STAMP = "# conf-md5: "
HEADER = ("# conf/ composed by Hydra. DVC tracks this file and the pipeline stages read it. Do not edit it:\n"
          "# edit conf/ and run `bilstm-exp compose-params [OVERRIDES]`, or `dvc exp run -S KEY=VALUE`.\n")
RECOMPOSE = ("run `dvc exp run` (it recomposes conf/ into params.yaml; add -S KEY=VALUE for overrides), "
             "or `bilstm-exp compose-params [OVERRIDES]` and then `dvc repro`")


def conf_md5(root: Path, params: dict[str, Any]) -> str:
    """Hash of what the configs ``params`` was composed from say: config.yaml and the folders of the
    groups it draws on, in each layer (the project's ``conf/`` and the packaged one), each YAML file's
    layer, relative path and parsed content (comments and formatting do not count). config.yaml's
    ``hydra:`` section (output folders, callbacks) never reaches params.yaml, so it does not count
    either. The defaults the YAML files extend (the schemas in config/) count too."""
    from bilstm_exp.config.registration import schema_digest

    digest = hashlib.md5(schema_digest().encode())
    for layer in conf_layers(root):
        name = "conf" if layer != CONF_DIR else CONF_MODULE  # never a path of this machine
        for path in _config_files(layer, params):
            digest.update(f"{name}/{path.relative_to(layer).as_posix()}".encode() + b"\0")
            digest.update(json.dumps(_yaml_content(path, layer), sort_keys=True, default=str).encode() + b"\0")
    return digest.hexdigest()


def _config_files(layer: Path, params: dict[str, Any]) -> list[Path]:
    """config.yaml and the YAML files of the groups a composition draws on (its top-level keys that
    are folders of the layer)."""
    groups = sorted(key for key in params if isinstance(params[key], dict) and (layer / key).is_dir())
    files = [layer / "config.yaml"]
    for group in groups:
        files += sorted(p for p in (layer / group).rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())
    return [path for path in files if path.is_file()]


def _yaml_content(path: Path, layer: Path) -> Any:
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({str(error).splitlines()[0]}). Fix: correct the file") from None
    if path == layer / "config.yaml" and isinstance(content, dict):
        content = {key: value for key, value in content.items() if key != "hydra"}
    return content


def compose(root: Path, overrides: list[str]) -> str:
    """conf/ composed with Hydra overrides, as YAML text exactly as `dvc exp run` writes it, except that
    values from the environment stay ``${oc.env:NAME}`` (resolved when a stage reads params.yaml):
    the git-tracked params.yaml never holds an environment value (bilstm_exp.tracking.redaction)."""
    from omegaconf import ListConfig, OmegaConf

    from bilstm_exp.config.compose import compose as hydra_compose
    from bilstm_exp.tracking import redaction

    cfg = hydra_compose(overrides, conf_dir=root / USER_CONF if (root / USER_CONF).is_dir() else None)
    from_env = redaction.references(cfg)
    OmegaConf.resolve(cfg)
    for key, text in from_env.items():
        if not isinstance(OmegaConf.select(cfg, key), ListConfig):
            OmegaConf.update(cfg, key, text, merge=False)
    return OmegaConf.to_yaml(cfg)


def compose_params(root: Path, overrides: list[str]) -> Path:
    """Write params.yaml: the composition, preceded by a header and the conf/ md5 it came from."""
    body = compose(root, overrides)
    params = yaml.safe_load(body)
    validate(params)
    from bilstm_exp.config.plain import flatten
    from bilstm_exp.tracking import redaction

    leaked = redaction.credential_keys(flatten(params))
    if leaked:
        raise ConfigError(f"{leaked[0]}: holds credentials, and params.yaml is tracked by git. Fix: remove them "
                          "and put them in MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD or "
                          "MLFLOW_TRACKING_TOKEN")
    stamp = f"{STAMP}{conf_md5(root, params)}\n"
    recipe = f"# overrides: {' '.join(overrides)}\n" if overrides else ""
    write_text(root / PARAMS, HEADER + stamp + recipe + body)
    return root / PARAMS


def read_stamp(text: str) -> str | None:
    for line in text.splitlines():
        if line.startswith(STAMP):
            return line[len(STAMP):].strip()
    return None


def _restore_header(root: Path, text: str, md5: str, note: str) -> None:
    """Rewrite params.yaml as compose_params writes it: HEADER, the conf/ md5, ``note``, then the YAML
    (values untouched, so DVC's params of the stage do not change)."""
    write_text(root / PARAMS, HEADER + f"{STAMP}{md5}\n" + note + text.removeprefix(HEADER))


def check_fresh(root: Path, text: str, params: dict[str, Any]) -> None:
    """Refuse params.yaml when conf/ changed after it was composed (see the module docstring), or when
    it records another bilstm-exp version than the installed one (a project's ``bilstm_exp_version``,
    bilstm-exp init): recomposed, the new version changes the stages' params and DVC re-runs them."""
    from bilstm_exp import __version__

    composed_with = params.get("bilstm_exp_version")
    if composed_with is not None and str(composed_with) != __version__:
        raise ConfigError(f"params.yaml was composed with bilstm-exp {composed_with} and {__version__} is installed; "
                          f"DVC would not re-run the stages for the upgrade. Fix: {RECOMPOSE}")
    current = conf_md5(root, params)
    stamp = read_stamp(text)
    if stamp is None and os.environ.get("DVC_EXP_NAME"):
        # `dvc exp run` has just composed params.yaml from conf/ (hydra.enabled), without our header
        # (DVC writes the bare YAML): put the header back and record the conf/ it came from.
        _restore_header(root, text, current, f"# composed by: dvc exp run ({os.environ['DVC_EXP_NAME']})\n")
        return
    if stamp is None:
        if yaml.safe_load(compose(root, [])) == yaml.safe_load(text):
            _restore_header(root, text, current, "")  # e.g. a `dvc exp run` whose stages were all cached
            return
        raise ConfigError(f"params.yaml: no '{STAMP.strip('# ')}' line, so it cannot be checked against conf/, "
                          f"and it differs from the default composition of conf/. Fix: {RECOMPOSE}")
    if stamp != current:
        raise ConfigError(f"conf/ changed since params.yaml was composed (params.yaml records conf/ md5 {stamp}, "
                          f"conf/ is now {current}); this stage would run on stale params. Fix: {RECOMPOSE}")


def load_params(path: Path, root: Path | None = None) -> ExperimentConfig:
    """Read, drift-check and validate params.yaml."""
    root = root or Path.cwd()
    if not path.is_file():
        raise ConfigError(f"{path}: not found. Fix: run the stage in the project root, or create it from conf/ "
                          "with `bilstm-exp compose-params` (or `dvc exp run`)")
    text = path.read_text(encoding="utf-8")
    try:
        params = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({str(error).splitlines()[0]}). "
                          "Fix: recreate it with `bilstm-exp compose-params`") from None
    if not isinstance(params, dict) or not params:
        raise ConfigError(f"{path}: empty or not a mapping. Fix: recreate it with `bilstm-exp compose-params`")
    if path.resolve() == (root / PARAMS).resolve():
        check_fresh(root, text, params)
    return validate(params)
