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
