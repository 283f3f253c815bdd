"""Errors that mean "your input is wrong": the CLI prints their message and exits non-zero."""


class UserError(Exception):
    """Bad input the user can fix; the message names the problem and the fix."""


class ConfigError(UserError, ValueError):
    """A config value is unknown, of the wrong type or out of range."""


class DataError(UserError, ValueError):
    """Input data is missing, empty or malformed."""


class TrackingError(UserError, RuntimeError):
    """The tracking store is unreachable or misconfigured."""
