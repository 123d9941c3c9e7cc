"""Exceptions that carry a message meant for the person running the pipeline."""


class CastError(Exception):
    """An error caused by input or configuration, with a message that names the file or value and the fix.

    The command-line program prints the message without a traceback and exits with status 1.
    """


class DataError(CastError):
    """Invalid or unusable input data: images, masks, manifests, checkpoints."""


class ConfigError(CastError, ValueError):
    """An invalid parameter value or combination of values."""
