"""Errors a user can act on: the CLI prints them as one line, never a traceback."""


class MMUnlearnError(Exception):
    """Base class: message names what is wrong and where."""


class ConfigError(MMUnlearnError):
    """A config value that cannot be honoured."""


class DataError(MMUnlearnError):
    """A malformed input file or record (message names file and field)."""


class CacheError(MMUnlearnError):
    """A missing or corrupt cached artefact."""


def one_line(text: object, limit: int = 300) -> str:
    """Whitespace collapsed and truncated, so a wrapped library error stays a one-line message (an exception
    without a message gives its type's name)."""
    flat = " ".join(str(text).split())
    if not flat and isinstance(text, BaseException):
        flat = type(text).__name__
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
