"""One exception type for bad user input, so the CLI can report it as a single line."""


class UserError(Exception):
    """Bad input from the user (file, flag or value). The CLI prints `bratsbench: error: <msg>` and exits 2.

    The message must be one line and name the offending file or value and what is wrong with it.
    """
