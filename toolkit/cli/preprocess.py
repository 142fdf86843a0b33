"""CLI commands (being written)."""

from toolkit.cli.app import app, manifest_app  # noqa: F401
