"""seqlab: the whole life of a small sequence model on one machine."""

import os

# bfloat16 matmuls on a CPU go through oneDNN, which keeps a compiled primitive for each
# distinct shape it has seen, 1,024 of them by default. Sampling and GRPO meet a new shape at
# almost every token (the attention's key length grows, every rollout's width differs), so a
# long bfloat16 run's memory only grew: a GRPO run on SmolLM2-135M peaked 0.43 GiB higher
# after 12 updates (3.20 against 2.78 GiB with 128). 128 primitives hold
# every shape one forward and backward reuses: the same step time (GRPO, 3 updates, Intel
# Xeon, one thread: 60.5 s at 1,024, 60.6 s at 128; at 16, twice as slow). oneDNN reads this
# when it makes its first primitive, so it is set on import, before any work; a value the
# user set wins.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "128")

__version__ = "0.1.0"
