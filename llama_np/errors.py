"""The one exception type for bad input: the CLI turns it into `error: ...` and exit status 2."""


class LlamaNpError(Exception):
    """Bad input from the user: a missing or corrupt file, a wrong shape, a bad option."""
