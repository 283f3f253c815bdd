"""What never leaves the process: values from the environment and credentials.

Secrets come only from the environment. Hydra resolves ``${oc.env:NAME}`` into the composed config,
so without care an environment value would reach everything that records the config (MLflow
params, tags and artifacts, params.yaml, logs). The rule, applied by :func:`scrub`:

* a config leaf whose unresolved value interpolates the environment (``${oc.env:NAME}``, also
  inside a longer string, or through ``${other.key}`` pointing at such a leaf) is recorded as its
  interpolation text, never as its value (:func:`references` finds them in the unresolved config;
  the validated config holds them in its ``env_refs`` field);
* a value under a key that names a secret (password, token, ...) is replaced by ``***``;
* credentials in a URI (``user:password@``, secret-looking query values) are removed;
* any text containing the value of an environment variable seen in an interpolation is masked
  with the interpolation (a safety net for free text: tags, messages).

No MLflow, Hydra or TensorFlow here (layer 1: ``config`` and ``pipeline`` use it).
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Mapping
from typing import Any

SECRET_WORDS = ("password", "passwd", "secret", "token", "api_key", "apikey", "credential")
MASK = "***"
ENV_INTERPOLATION = re.compile(r"\$\{oc\.env:\s*([^,}\s]+)")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"]+")
# Values of environment variables that an interpolation has named in this process, -> "${oc.env:NAME}".
# Only values of 4 characters or more that are not plain numbers are masked in free text (masking "3"
# everywhere would garble every record); config leaves are masked by key whatever their value.
_SEEN: dict[str, str] = {}


# --------------------------------------------------------------------------- credentials


def redact(uri: str) -> str:
    """The URI without user info and without secret-looking query values."""
    parts = urllib.parse.urlsplit(uri)
    pairs = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    secret_query = any(_names_secret(k) for k, _ in pairs)
    if "@" not in parts.netloc and not secret_query:
        return uri
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = urllib.parse.urlencode([(k, MASK if _names_secret(k) else v) for k, v in pairs])
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def has_credentials(uri: str) -> bool:
    """True when a URI embeds a user, a password or a secret-looking query value."""
    return isinstance(uri, str) and "://" in uri and redact(uri) != uri


def _names_secret(key: str) -> bool:
    """The key's last part names a secret: contains password/secret/credential, or ends in token or
    api key (``auth_token`` is a secret, ``data.min_token_frequency`` is not)."""
    last = str(key).lower().rsplit(".", 1)[-1]
    return any(word in last for word in ("password", "passwd", "secret", "credential")) or last.endswith(
        ("token", "api_key", "apikey"))


def is_secret(key: str, value: Any) -> bool:
    """True for a key that names a secret or a value that embeds credentials."""
    return _names_secret(key) or (isinstance(value, str) and "://" in value and has_credentials(value))


def redact_text(text: str) -> str:
    """Free text with credentials cut out of every URL in it and environment values masked."""
    if not isinstance(text, str):
        return text
    if "://" in text:
        text = _URL.sub(lambda match: redact(match.group(0)), text)
    for value in sorted(_SEEN, key=len, reverse=True):
        if value in text:
            text = text.replace(value, _SEEN[value])
    return text


# --------------------------------------------------------------------------- environment interpolations


def references(cfg: Any) -> dict[str, str]:
    """Dotted key -> unresolved text, for every leaf of an (unresolved) OmegaConf config whose value
    comes from the environment; the ``hydra`` node is skipped. Also remembers the variables' values
    for :func:`redact_text`."""
    raw: dict[str, str] = {}
    _unresolved(cfg, "", raw)
    env = {key: text for key, text in raw.items() if ENV_INTERPOLATION.search(text)}
    # a leaf that interpolates an env-derived leaf (${tracking.password}) carries the same value
    changed = True
    while changed:
        changed = False
        for key, text in raw.items():
            if key not in env and any(f"${{{ref}}}" in text for ref in env):
                env[key], changed = text, True
    for text in env.values():
        remember(text)
    return env


def _unresolved(node: Any, key: str, raw: dict[str, str]) -> None:
    """Collect into ``raw`` the unresolved text of every interpolated leaf under ``node`` (and of
    plain strings that hold an environment interpolation as text)."""
    from omegaconf import DictConfig, ListConfig

    if node is None:
        return
    if node._is_interpolation():
        raw[key] = str(node._value())
    elif isinstance(node, (DictConfig, ListConfig)):
        if node._is_none() or node._is_missing():
            return
        if isinstance(node, DictConfig):
            for child in node.keys():
                if key or child != "hydra":
                    _unresolved(node._get_node(child), f"{key}.{child}" if key else str(child), raw)
        else:
            items = [node._get_node(i) for i in range(len(node))]
            if any(item is not None and item._is_interpolation() for item in items):
                raw[key] = "[" + ", ".join(str(item._value()) for item in items) + "]"
    elif isinstance(node._value(), str) and ENV_INTERPOLATION.search(node._value()):
        raw[key] = node._value()  # e.g. "${oc.env:HOME}/x" as text


def remember(text: str) -> None:
    """Note the values of the environment variables ``text`` interpolates (for :func:`redact_text`)."""
    for name in ENV_INTERPOLATION.findall(text):
        value = os.environ.get(name)
        if value and len(value) >= 4 and not value.strip().lstrip("-").replace(".", "", 1).isdigit():
            _SEEN[value] = f"${{oc.env:{name}}}"


def scrub(tree: Any, env_refs: Mapping[str, str] | None = None, prefix: str = "") -> Any:
    """A copy of ``tree`` (nested or flat dicts with dotted keys, lists, scalars) that can be written
    anywhere: leaves in ``env_refs`` become their interpolation text, values under secret-naming keys
    become ``***``, credentials are cut out of URLs and remembered environment values are masked."""
    env_refs = env_refs or {}
    if isinstance(tree, Mapping):
        out = {}
        for key, value in tree.items():
            dotted = f"{prefix}{key}"
            if dotted in env_refs:
                out[key] = env_refs[dotted]
            elif _names_secret(key) and value not in (None, ""):
                out[key] = MASK
            else:
                out[key] = scrub(value, env_refs, f"{dotted}.")
        return out
    if isinstance(tree, (list, tuple)):
        return [scrub(item, env_refs, prefix) for item in tree]
    if isinstance(tree, str):
        return redact_text(tree)
    return tree


def credential_keys(flat: Mapping[str, Any]) -> list[str]:
    """Keys of a flat config whose value is a URI with credentials (to refuse, naming the fix)."""
    return [key for key, value in flat.items() if isinstance(value, str) and has_credentials(value)]
