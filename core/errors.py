"""Errors a user can act on: the CLI prints their message in one line, never a traceback."""


class DriftloopError(Exception):
    """Base of all errors caused by input the user can fix."""


class ConfigError(DriftloopError):
    """The YAML config is missing, malformed or has a wrong key."""


class DataError(DriftloopError):
    """A data file cannot be read or does not fit the data contract."""


class TrainingError(DriftloopError):
    """Training settings that cannot work, or a training run that failed."""


class RegistryError(DriftloopError):
    """The model registry has no model where one is needed."""
