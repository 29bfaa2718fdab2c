"""The error raised for bad user input (files, formats, names)."""


class InputError(ValueError):
    """Bad user input: the message is one line naming the problem (shown by the CLI)."""
