"""The one exception type for bad input: the CLI turns it into a message and exit code 2."""


class UserError(Exception):
    """Input at fault. The message names the input and what was expected."""
