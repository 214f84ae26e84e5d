"""Subcommands of the ferroquant CLI, one module each."""
