import os
import random
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)  # tests compare numbers; keep them on one deterministic path

REPO = Path(__file__).resolve().parents[1]
NAMES = REPO.parent / "shared" / "data" / "names.txt"


def tiny_words(n=300, seed=0):
    rng = random.Random(seed)
    syll = ["ka", "ri", "mo", "an", "el", "la", "to", "sa", "ne", "vi"]
    return ["".join(rng.choice(syll) for _ in range(rng.randint(1, 4))) for _ in range(n)]


@pytest.fixture
def words_file(tmp_path):
    p = tmp_path / "words.txt"
    p.write_text("\n".join(tiny_words()) + "\n", encoding="utf-8")
    return p


# Subprocesses too: on a busy 2-core machine torch's 2-thread pool can be 50x
# slower for tiny models (threads wait for a descheduled peer).
os.environ["OMP_NUM_THREADS"] = "1"


def seqlab_cmd(*args):
    return [sys.executable, "-m", "seqlab.cli", *map(str, args)]
