"""The errors a user can cause, in a module that imports nothing: the CLI catches them around every verb, and a
verb that uses no model must start without torch."""


class ConfigError(ValueError):
    """A configuration that does not match the schema; the message names the key path."""


class DataError(ValueError):
    """Bad input data; the message names the file and the column, row or label at fault."""


class UnreadableFile(ValueError):
    """An intermediate file that is truncated, corrupted or not written by lmadapt; the message names it."""


class ModelError(RuntimeError):
    """A model that cannot be found or loaded; the message says which and how to get it."""


class PromptError(ValueError):
    """A pattern that does not fit its task (unknown field, missing verbalizer)."""
