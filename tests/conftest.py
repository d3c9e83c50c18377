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


def write_post_data(d: Path, rewards_module: str) -> dict:
    """The toy post-training data: sums "a+b=" as SFT pairs, preference pairs (the sum over
    the sum + 1) and RL prompts with answers, and a reward module counting '1's (a reward
    only a changed policy can raise). Returns {algorithm: data file}."""
    import json

    sums = [(a, b) for a in range(5) for b in range(5)]
    sft, pref, rl = d / "sft.jsonl", d / "pref.jsonl", d / "rl.jsonl"
    sft.write_text("\n".join(json.dumps({"prompt": f"{a}+{b}=", "completion": str(a + b)}) for a, b in sums) + "\n")
    pref.write_text("\n".join(json.dumps({"prompt": f"{a}+{b}=", "chosen": str(a + b), "rejected": str(a + b + 1)})
                              for a, b in sums) + "\n")
    rl.write_text("\n".join(json.dumps({"prompt": f"{a}+{b}=", "answer": str(a + b)}) for a, b in sums) + "\n")
    (d / f"{rewards_module}.py").write_text(
        "def count_ones(prompts, completions, **kw):\n"
        "    return [float(c.count('1')) for c in completions]\n")
    return {"sft": sft, "dpo": pref, "rm": pref, "grpo": rl, "rejection": rl, "ppo": rl}
