"""`python -m seqlab ...` (and `torchrun ... -m seqlab train ...`): the same CLI as `seqlab`."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
