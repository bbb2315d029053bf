"""Subcommands of the ``depthfx`` CLI, one module each, registered in ``depthfx.cli.COMMANDS``."""
