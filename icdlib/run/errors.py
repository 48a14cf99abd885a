"""Errors raised at icdlib's boundaries.

Every error a user can cause (a bad parameter, a missing MIMIC table, a malformed split file)
is an `IcdlibError` whose message is one line naming the culprit and what was expected, so
the CLI can print it as is instead of a traceback.
"""


class IcdlibError(Exception):
    """A problem with the user's input, explained in one line."""


class ConfigError(IcdlibError):
    """A params file or override that does not validate."""


class MimicSchemaError(IcdlibError):
    """A MIMIC-III table that is missing, unreadable or lacks columns."""


class DataError(IcdlibError):
    """Data that reads but cannot be used (empty after filtering, bad split file, ...)."""


class DiskFullError(IcdlibError):
    """The disk (or the user's quota) filled up while writing: the folder, the space free, what was kept.

    `space` is the first part (`no space left on X (… free)`), so a caller that knows more (the
    step a checkpoint was saved at) can say it in the same words."""

    def __init__(self, message: str, space: str = ""):
        super().__init__(message)
        self.space = space or message
