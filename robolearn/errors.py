"""Errors a user can fix, kept apart from bugs.

The CLI prints a :class:`UserError` as one line and exits with code 2; any other exception is a bug
and keeps its traceback (``robolearn --debug ...`` shows the traceback of user errors too).

Raise :class:`UserError` for mistakes in what the user asked for or gave (a bad flag value, a store
that does not fit, a checkpoint for another policy), :class:`ConfigError` for a bad value in a YAML
file or a ``key=value`` override, :class:`MissingFileError` for a path the user named that is not
there. All are ``ValueError``\\ s, so existing ``except ValueError`` code keeps working.

This module imports nothing from robolearn: every layer may use it.
"""

from __future__ import annotations


class UserError(ValueError):
    """A mistake the user can fix; the message says what and where, in one line."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or directory the user named does not exist (also a ``FileNotFoundError``)."""


class ConfigError(UserError):
    """A bad value in a configuration file or override.

    ``key`` is the dotted key (``policy.unet.down_dims``), ``where`` the file (or override) it came
    from; both are optional and prefix the message: ``where: key: message``. A ``validate()`` hook
    raises ``ConfigError(message, key="field")`` and the loader adds the section and the file.
    """

    def __init__(self, message: str, *, key: str = "", where: str = "") -> None:
        self.message, self.key, self.where = message, key, where
        self.blame_key = ""  # the key an override would have to set to be the cause, when not ``key``
        super().__init__(": ".join(p for p in (where, key, message) if p))

    def relocate(self, where: str | None = None, key: str | None = None) -> ConfigError:
        """Set the place (a file or an override) and the full dotted key, in place; returns ``self``
        so that ``raise e.relocate(...)`` keeps the original traceback."""
        if where is not None:
            self.where = where
        if key is not None:
            self.key = key
        self.args = (": ".join(p for p in (self.where, self.key, self.message) if p),)
        return self


def join_key(prefix: str, key: str) -> str:
    """``join_key("policy", "unet.down_dims")`` -> ``"policy.unet.down_dims"``; list indices stay attached."""
    if not prefix:
        return key
    if not key:
        return prefix
    return f"{prefix}{key}" if key.startswith("[") else f"{prefix}.{key}"
