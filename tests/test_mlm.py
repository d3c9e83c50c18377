"""Masked language modelling (task mlm) and fine-tuning its encoder as a classifier."""

import json
import subprocess
import sys

import torch

from seqlab.mlm import mask_tokens


def test_masking_proportions_and_positions():
    g = torch.Generator().manual_seed(0)
    B, T = 400, 60
    lengths = torch.randint(10, T + 1, (B,), generator=g)
    x = torch.randint(5, 30, (B, T), generator=g)
    x[:, 0] = 1
    for b, n in enumerate(lengths.tolist()):
        x[b, n - 1] = 2
        x[b, n:] = 0
    inputs, targets = mask_tokens(x, lengths, mask_id=3, ordinary=(5, 30), generator=g)
    chosen = targets != -1
    real = (torch.arange(T)[None, :] >= 1) & (torch.arange(T)[None, :] < lengths[:, None] - 1)
    assert not (chosen & ~real).any()  # never <bos>, <eos> or padding
    assert torch.equal(targets[chosen], x[chosen])
    n_real, n_chosen = int(real.sum()), int(chosen.sum())
    assert abs(n_chosen / n_real - 0.15) < 0.01
    masked = int((inputs[chosen] == 3).sum())
    kept = int((inputs[chosen] == x[chosen]).sum())
    # random replacements equal the original 1/25 of the time: kept ~ 0.1 + 0.1 / 25
    assert abs(masked / n_chosen - 0.8) < 0.02
    assert abs(kept / n_chosen - (0.1 + 0.1 / 25)) < 0.02
    assert torch.equal(inputs[~chosen], x[~chosen])  # nothing else changes
    random_ids = inputs[chosen & (inputs != 3) & (inputs != x)]
    assert random_ids.min() >= 5 and random_ids.max() < 30


def seqlab(*args):
    r = subprocess.run([sys.executable, "-m", "seqlab", *map(str, args)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_mlm_then_classifier_from_its_encoder(tmp_path):
    from seqlab.checkpoint import load_model
    from seqlab.data.example_tasks import TASKS

    rows = TASKS["parens-balanced"].make(400, seed=0)
    (tmp_path / "lines.txt").write_text("\n".join(r["input"] for r in rows) + "\n")
    (tmp_path / "cls.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = seqlab("train", "--data", tmp_path / "lines.txt", "--task", "mlm", "--out", tmp_path / "mlm", "--steps", 60,
                 "--n-layer", 1, "--n-embd", 16, "--threads", 1, "--quiet", "--json")
    assert 0.0 <= res["mlm_accuracy"] <= 1.0 and res["val_loss"] < 2.0  # ln(vocab of ( and ) + specials) ~ 1.8
    mlm, tok, cfg = load_model(tmp_path / "mlm", "last")
    assert cfg.model.bidirectional and cfg.task.type == "mlm" and "<mask>" in tok.specials
    # one step at a learning rate of ~0: the classifier's backbone is still the MLM encoder
    seqlab("train", "--data", tmp_path / "cls.jsonl", "--init-from", tmp_path / "mlm", "--out", tmp_path / "ft",
           "--steps", 1, "--lr", 1e-12, "--threads", 1, "--quiet", "--json")
    clf, tok2, cfg2 = load_model(tmp_path / "ft", "last")
    assert cfg2.model.bidirectional and cfg2.task.type == "classify" and tok2.to_dict() == tok.to_dict()
    for name, p in mlm.state_dict().items():
        assert torch.allclose(clf.backbone.state_dict()[name], p, atol=1e-6), name


def test_mlm_logits_ignore_padding():
    """Padding invariance for mlm: a padded batch's logits at real positions are each line's alone."""
    from seqlab.config import ModelConfig
    from seqlab.mlm import mlm_loss_sum
    from seqlab.models import build_model

    torch.manual_seed(0)
    m = build_model(ModelConfig(type="transformer", n_layer=2, n_head=2, n_embd=16, block_size=12, dropout=0.0,
                                bidirectional=True), 9).eval()
    x = torch.randint(4, 9, (3, 10))
    lengths = torch.tensor([10, 4, 7])
    x[1, 4:] = 0
    x[2, 7:] = 0
    targets = torch.full_like(x, -1)
    with torch.no_grad():
        _, batch = mlm_loss_sum(m, x, lengths, targets)
        for b, n in enumerate(lengths.tolist()):
            _, alone = mlm_loss_sum(m, x[b: b + 1, :n], torch.tensor([n]), targets[b: b + 1, :n])
            assert torch.allclose(batch[b, :n], alone[0], atol=1e-5)
