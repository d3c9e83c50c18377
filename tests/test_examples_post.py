"""The shipped post-training examples: every config loads, names files that exist, and
runs two updates on the shipped models and data (the full runs are in the README)."""

from pathlib import Path

import pytest

from seqlab.checkpoint import load_model
from seqlab.post.config import load_post_config

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "post"


@pytest.mark.parametrize("algorithm", ["sft", "rejection", "rm", "ppo", "grpo", "dpo", "distill"])
def test_example_config_runs(algorithm, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the configs use paths relative to the repository root
    cfg = load_post_config(str(EXAMPLES / f"{algorithm}.toml"),
                           {"out": str(tmp_path / algorithm), "steps": 2, "rounds": 1, "round_prompts": 8,
                            "prompts_per_step": 2, "batch_size": 8, "max_seconds": 0.0})
    assert Path(cfg.policy).is_dir() and Path(cfg.data).is_file()
    from seqlab.post import get_runner

    result = get_runner(algorithm)(cfg, progress=False)
    assert result["step"] == 2 and result["loss"] == result["loss"]
    model, tok, _ = load_model(tmp_path / algorithm)
    assert model.lm_head.weight.shape[0] == tok.vocab_size
    assert len((tmp_path / algorithm / "metrics.csv").read_text().splitlines()) == 3
