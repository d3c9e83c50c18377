"""seqlab: the whole life of a small sequence model on one machine."""

__version__ = "0.1.0"
