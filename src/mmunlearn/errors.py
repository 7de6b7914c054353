"""Errors a user can act on: the CLI prints them as one line, never a traceback."""


class MMUnlearnError(Exception):
    """Base class: message names what is wrong and where."""


class ConfigError(MMUnlearnError):
    """A config value that cannot be honoured."""


class DataError(MMUnlearnError):
    """A malformed input file or record (message names file and field)."""


class CacheError(MMUnlearnError):
    """A missing or corrupt cached artefact."""
