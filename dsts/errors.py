"""The library's errors: one root, :class:`DSTSError`, for every problem a user can fix.

A stage script catches ``DSTSError`` and prints its message as one line (``pipeline/_cli.py``);
anything else is a bug and keeps its traceback. This module imports nothing heavy, so a stage can
catch the errors before torch is loaded.
"""

from __future__ import annotations


class DSTSError(Exception):
    """Bad input a user can fix: a checkpoint of another config, a missing weights file, ..."""


class ConfigError(DSTSError, ValueError):
    """A bad configuration value; the message is one line that names the dotted key."""


class DataError(DSTSError):
    """Bad data: the one-line message names the annotation file and entry or line, or the video file."""


class TrackingError(DSTSError):
    """An MLflow store that cannot be opened: the one-line message names the tracking URI."""
