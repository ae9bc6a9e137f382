"""Errors a user can act on (a bad flag, file or value): the CLI prints them as one line, exit 2.

Everything else is a bug and keeps its traceback. A ValueError subclass, so code that already
catches ValueError keeps working.
"""


class UserError(ValueError):
    """A mistake in what the user asked for; the message says what and what to do."""


class ConfigError(UserError):
    """A configuration file or override that does not validate; the message names the key."""
