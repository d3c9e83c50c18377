"""The one exception type users see: the CLI prints it as a single `error:` line."""


class SeqlabError(Exception):
    """A problem with the user's input or environment, explained in one line."""


class DryRun(Exception):
    """`seqlab --dry-run VERB ...`: raised where the verb has checked its flags and config
    files and would start its work (read a run, train, write); the CLI reports success."""

    def __init__(self, next_step: str):
        super().__init__(next_step)
        self.next_step = next_step


def ready(args, next_step: str) -> None:
    """The point a verb's checks end and its work begins: stop here under --dry-run."""
    if getattr(args, "dry_run", False):
        raise DryRun(next_step)
