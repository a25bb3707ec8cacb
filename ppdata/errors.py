"""Errors that reach the user as one line (exit status 1 from the CLI)."""


class PpdataError(Exception):
    """A runtime failure with a message fit for the user: it names the file or option at fault."""
