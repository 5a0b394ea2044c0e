"""The project's input errors: what a user gave (a config, a card, a backbone, data) cannot serve a run.

The CLI prints an :class:`InputError` as one ``error:`` line with exit code 2 (``--debug`` adds the traceback); any
other exception is a bug or an outage and keeps its traceback.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input, phrased as one line that names what is wrong and how to fix it."""


class ConfigError(InputError):
    """A configuration problem (a YAML file, a key, a value, a grid, a card file): names the file, the key and the
    fix."""


class DataError(ConfigError):
    """The data a card points at (its index, split folders or frames) cannot serve the run."""
