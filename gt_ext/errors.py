"""One error type for everything a user can get wrong.

CLIs catch `GtExtError` and print `error: <message>` on one line with `exit_code` (default 2).
Messages say what and where; they must never contain a secret.
"""


class GtExtError(Exception):
    """A user-facing failure: bad input, missing file, refused operation."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


class ConfigError(GtExtError):
    """A config file or key=value override is invalid."""
