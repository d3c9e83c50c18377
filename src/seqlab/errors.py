"""The one exception type users see: the CLI prints it as a single `error:` line."""


class SeqlabError(Exception):
    """A problem with the user's input or environment, explained in one line."""
