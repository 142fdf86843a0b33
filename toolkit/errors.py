"""Errors the toolkit raises on bad input.

Every error a user can cause (a bad config value, a missing or corrupt file, a manifest problem) is
a :class:`ToolkitError`. Its message names the field or file and says what is wrong, so the command
line prints it as one line instead of a traceback.
"""

from __future__ import annotations


class ToolkitError(Exception):
    """Base class of every user-facing error: the message is complete on its own."""


class ConfigError(ToolkitError, ValueError):
    """A config field has an unknown name or bad value; the message starts with its dotted name."""


class DataError(ToolkitError):
    """A data file is missing, unreadable, corrupt or has the wrong shape/spacing/values."""


class ManifestError(ToolkitError):
    """A manifest file cannot be parsed or does not follow the schema."""


class TrainingError(ToolkitError):
    """Training stopped for a reason the user must act on (e.g. a non-finite loss)."""


class StorageError(ToolkitError):
    """A file or folder cannot be written: read-only, no permission, or the disk is full."""


class DiskFullError(StorageError):
    """A write ran out of disk space (ENOSPC / EDQUOT); the message says what to free."""
