"""Classification and regression runs (issue 20): encoders, pooling, padding, metrics, files."""

import json
import subprocess
import sys

import pytest
import torch

from seqlab.config import ModelConfig, TaskConfig
from seqlab.data.examples import check_rows, infer_task_type, read_jsonl
from seqlab.errors import SeqlabError
from seqlab.models import build_model
from seqlab.models.heads import SequenceModel
from seqlab.supervised import classification_metrics, regression_metrics, similar_length_batch


def backbone(kind, bidirectional, input_dim=0):
    torch.manual_seed(0)
    return build_model(ModelConfig(type=kind, n_layer=2, n_head=2, n_embd=16, block_size=20, dropout=0.0,
                                   bidirectional=bidirectional, input_dim=input_dim), 9).eval()


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_bidirectional_rnn_backward_half_is_the_reversed_sequence(kind):
    """The backward direction of a 1-layer bidirectional RNN equals a forward RNN with its
    weights run over the reversed sequence (then reversed back)."""
    torch.manual_seed(0)
    m = build_model(ModelConfig(type=kind, n_layer=1, n_embd=8, n_hidden=6, bidirectional=True, dropout=0.0), 9)
    fwd = build_model(ModelConfig(type=kind, n_layer=1, n_embd=8, n_hidden=6, dropout=0.0), 9)
    with torch.no_grad():
        fwd.wte.weight.copy_(m.wte.weight)
        for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
            getattr(fwd.rnn, name).copy_(getattr(m.rnn, name + "_reverse"))
        fwd.h0.copy_(m.h0[1:2])
        if kind == "lstm":
            fwd.c0.copy_(m.c0[1:2])
    x = torch.randint(0, 9, (3, 7))
    lengths = torch.tensor([7, 4, 1])
    with torch.no_grad():
        both = m.encode(x, lengths)
        for b, n in enumerate(lengths.tolist()):
            rev = fwd.encode(x[b: b + 1, :n].flip(1), torch.tensor([n]))
            assert torch.allclose(both[b, :n, 6:], rev[0].flip(0), atol=1e-6)
            assert (both[b, n:] == 0).all()  # padded steps: zeros


def test_encoder_sees_the_future_and_the_decoder_does_not():
    x = torch.randint(0, 9, (1, 8))
    x2 = x.clone()
    x2[0, -1] = (x[0, -1] + 1) % 9
    n = torch.tensor([8])
    with torch.no_grad():
        enc, dec = backbone("transformer", True), backbone("transformer", False)
        assert not torch.allclose(enc.encode(x, n)[0, 0], enc.encode(x2, n)[0, 0], atol=1e-6)
        assert torch.equal(dec.encode(x, n)[0, :7], dec.encode(x2, n)[0, :7])


CASES = [("transformer", False, "last"), ("transformer", True, "mean"), ("transformer", True, "cls"),
         ("gru", False, "last"), ("lstm", True, "last"), ("rnn", True, "mean")]


@pytest.mark.parametrize("kind,bidirectional,pooling", CASES)
@pytest.mark.parametrize("numeric", [False, True])
def test_padding_changes_nothing(kind, bidirectional, pooling, numeric):
    """A padded batch gives each sequence the output it gets alone."""
    m = SequenceModel(backbone(kind, bidirectional, input_dim=3 if numeric else 0), 4, pooling).eval()
    g = torch.Generator().manual_seed(1)
    lengths = torch.tensor([9, 3, 6])
    x = torch.randn(3, 9, 3, generator=g) if numeric else torch.randint(0, 9, (3, 9), generator=g)
    pad_value = 1e3 if numeric else 0  # padding content must not matter either
    x[1, 3:] = pad_value
    x[2, 6:] = pad_value
    with torch.no_grad():
        batch = m(x, lengths)
        for b, n in enumerate(lengths.tolist()):
            alone = m(x[b: b + 1, :n], torch.tensor([n]))
            assert torch.allclose(batch[b], alone[0], atol=1e-5), (b, n)


def test_pooling_by_hand():
    class Fixed(torch.nn.Module):
        hidden_size = 2

        def encode(self, x, lengths):
            return x

    h = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], [[7.0, 8.0], [9.0, 10.0], [0.0, 0.0]]])
    n = torch.tensor([3, 2])
    assert SequenceModel(Fixed(), 1, "last").pool(h, n).tolist() == [[5.0, 6.0], [9.0, 10.0]]
    assert SequenceModel(Fixed(), 1, "mean").pool(h, n).tolist() == [[3.0, 4.0], [8.0, 9.0]]
    assert SequenceModel(Fixed(), 1, "cls").pool(h, n).tolist() == [[1.0, 2.0], [7.0, 8.0]]


def test_metrics_by_hand():
    truth = torch.tensor([0, 0, 1, 1, 2, 2])
    pred = torch.tensor([0, 1, 1, 1, 0, 2])
    m = classification_metrics(pred, truth, 3)
    # F1: class 0: tp 1, fp 1, fn 1 -> 0.5; class 1: tp 2, fp 1, fn 0 -> 0.8; class 2: tp 1, fn 1 -> 2/3
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert m["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    r = regression_metrics(torch.tensor([[1.0], [2.0], [4.0]]), torch.tensor([[1.0], [3.0], [5.0]]))
    # errors 0, -1, -1: MSE 2/3, MAE 2/3; SST around 3: 4 + 0 + 4 = 8, R^2 = 1 - 2/8
    assert r["mse"] == pytest.approx(2 / 3) and r["mae"] == pytest.approx(2 / 3) and r["r2"] == pytest.approx(0.75)


def write(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_jsonl_errors_name_the_line_and_key(tmp_path):
    bad = write(tmp_path / "a.jsonl", [{"input": "ab", "label": "x"}, "{not json"])
    with pytest.raises(SeqlabError, match=r"a.jsonl:2: not valid JSON"):
        read_jsonl(bad)
    rows = read_jsonl(write(tmp_path / "b.jsonl", [{"input": "ab", "label": "x"}, {"input": "ab"}]))
    assert infer_task_type(rows, "b.jsonl") == "classify"
    with pytest.raises(SeqlabError, match=r"b.jsonl:2: missing key 'label'"):
        check_rows(rows, "classify", "b.jsonl")
    rows = read_jsonl(write(tmp_path / "c.jsonl", [{"input": [1, 2], "target": 1.0},
                                                    {"input": "12", "target": 2.0}]))
    assert infer_task_type(rows, "c.jsonl") == "regress"
    with pytest.raises(SeqlabError, match=r"c.jsonl:2: key 'input': every example"):
        check_rows(rows, "regress", "c.jsonl")
    rows = read_jsonl(write(tmp_path / "d.jsonl", [{"input": "a", "target": [1.0, 2.0]},
                                                    {"input": "b", "target": [1.0]}]))
    with pytest.raises(SeqlabError, match=r"d.jsonl:2: key 'target' has 1 numbers"):
        check_rows(rows, "regress", "d.jsonl")


def seqlab(*args):
    r = subprocess.run([sys.executable, "-m", "seqlab", *map(str, args)], capture_output=True, text=True)
    return r.returncode, r.stdout, r.stderr


def test_similar_length_batches_are_uniform_over_examples_and_narrow_in_length():
    """group_by_length's draw: every example as likely as in a uniform batch (counts over
    many draws within 5 standard deviations of the mean), each batch inside one window of
    the length order (wrapping around its end), and the same batches from the same seed."""
    lengths = torch.randint(1, 400, (500,), generator=torch.Generator().manual_seed(1))
    by_length = torch.argsort(lengths, stable=True)
    rank = torch.empty(500, dtype=torch.long)
    rank[by_length] = torch.arange(500)
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(500)
    for _ in range(4000):
        idx = similar_length_batch(by_length, 16, 40, g)
        counts += torch.bincount(idx, minlength=500)
        r = torch.sort(rank[idx]).values
        # the positions fit in a circular window of 40: the largest circular gap leaves < 40
        assert 500 - torch.diff(torch.cat([r, r[:1] + 500])).max() < 40
    mean = 4000 * 16 / 500
    assert (counts - mean).abs().max() < 5 * mean ** 0.5
    a = similar_length_batch(by_length, 16, 40, torch.Generator().manual_seed(3))
    assert torch.equal(a, similar_length_batch(by_length, 16, 40, torch.Generator().manual_seed(3)))


def test_group_by_length_trains_and_resumes_exactly(tmp_path):
    """A classifier trained with --group-by-length for 20 steps in one go and in two runs of
    10 (the second resumed) ends with the same weights: the batches come from the saved
    generator only."""
    from safetensors.torch import load_file

    g = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(200):
        s = "".join("ab"[int(c)] for c in torch.randint(0, 2, (int(torch.randint(1, 30, (1,), generator=g)),),
                                                          generator=g))
        rows.append({"input": s, "label": "more_a" if s.count("a") > s.count("b") else "not"})
    data = write(tmp_path / "cls.jsonl", rows)
    common = ["--data", data, "--n-layer", 1, "--n-embd", 16, "--dropout", 0, "--threads", 1, "--quiet",
              "--checkpoint-interval", 10, "--eval-interval", 10, "--group-by-length", "--batch-size", 8]
    assert seqlab("train", *common, "--out", tmp_path / "one", "--steps", 20)[0] == 0
    assert seqlab("train", *common, "--out", tmp_path / "two", "--steps", 10)[0] == 0
    code, _, err = seqlab("train", *common, "--out", tmp_path / "two", "--steps", 20, "--resume")
    assert code == 0, err
    one = load_file(str(tmp_path / "one" / "checkpoints" / "step-00000020" / "weights.safetensors"))
    two = load_file(str(tmp_path / "two" / "checkpoints" / "step-00000020" / "weights.safetensors"))
    assert one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one)
    assert json.loads((tmp_path / "one" / "config.json").read_text())["train"]["group_by_length"] is True
    (tmp_path / "lines.txt").write_text("ab\nba\n" * 20)
    code, _, err = seqlab("train", "--data", tmp_path / "lines.txt", "--out", tmp_path / "lm", "--group-by-length")
    assert code != 0 and err.strip() == ("error: config key 'train.group_by_length': applies to classify, "
                                         "regress and seq2seq (JSONL data), not to lm")


def test_classify_run_end_to_end(tmp_path):
    """A learnable toy (is the first character 'a'?) reaches full accuracy; eval --data
    gives the contract's keys and a confusion matrix."""
    g = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(300):
        s = "".join("ab"[int(c)] for c in torch.randint(0, 2, (int(torch.randint(1, 8, (1,), generator=g)),),
                                                          generator=g))
        rows.append({"input": s, "label": "starts_a" if s[0] == "a" else "starts_b"})
    data = write(tmp_path / "cls.jsonl", rows)
    code, out, err = seqlab("train", "--data", data, "--out", tmp_path / "run", "--steps", 150, "--n-layer", 1,
                            "--n-embd", 16, "--dropout", 0, "--bidirectional", "--pooling", "cls", "--threads", 1,
                            "--quiet", "--json")
    assert code == 0, err
    res = json.loads(out.strip().splitlines()[-1])
    assert res["accuracy"] == 1.0 and res["macro_f1"] == 1.0
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["task"]["type"] == "classify" and cfg["task"]["labels"] == ["starts_a", "starts_b"]
    assert (tmp_path / "run" / "confusion.png").stat().st_size > 1000
    code, out, err = seqlab("eval", tmp_path / "run", "--data", data, "--json")
    assert code == 0, err
    ev = json.loads(out.strip().splitlines()[-1])
    assert ev["examples"] == 300 and ev["accuracy"] == 1.0
    assert sum(map(sum, ev["confusion"])) == 300
    bad = write(tmp_path / "bad.jsonl", [{"input": "ab", "label": "starts_c"}])
    code, out, err = seqlab("eval", tmp_path / "run", "--data", bad)
    assert code != 0 and err.strip() == ("error: " + str(bad) + ":1: label 'starts_c' is not one of the run's "
                                         "labels ['starts_a', 'starts_b']")


def test_regress_numeric_inputs_use_a_projection(tmp_path):
    """Numbers in: no token embedding is used (the input projection), and the mean is learned
    to R^2 > 0.9 by a GRU in a few hundred steps."""
    g = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(400):
        xs = (torch.rand(int(torch.randint(2, 8, (1,), generator=g)), generator=g) * 2 - 1).tolist()
        rows.append({"input": xs, "target": sum(xs) / len(xs)})
    data = write(tmp_path / "reg.jsonl", rows)
    code, out, err = seqlab("train", "--data", data, "--out", tmp_path / "run", "--model", "gru", "--steps", 400,
                            "--n-layer", 1, "--n-embd", 16, "--dropout", 0, "--threads", 1, "--quiet", "--json")
    assert code == 0, err
    res = json.loads(out.strip().splitlines()[-1])
    assert res["r2"] > 0.9
    from seqlab.checkpoint import load_model

    model, _, cfg = load_model(tmp_path / "run")
    assert cfg.model.input_dim == 1 and cfg.task.type == "regress" and len(cfg.task.target_mean) == 1
    x, n = torch.tensor([[[0.5], [-0.25], [0.0]]]), torch.tensor([3])
    with torch.no_grad():
        before = model(x, n)
        model.backbone.wte.weight.normal_()  # the token embedding plays no part
        assert torch.equal(model(x, n), before)
        mean, std = cfg.task.target_mean[0], cfg.task.target_std[0]  # the head predicts standardised targets
        assert float(before) * std + mean == pytest.approx(0.25 / 3, abs=0.1)


def test_lm_rejects_bidirectional_and_supervised_rejects_bigram(tmp_path):
    lines = write(tmp_path / "l.txt", ["abc", "abd"])
    code, _, err = seqlab("train", "--data", lines, "--out", tmp_path / "r1", "--bidirectional", "--steps", 1)
    assert code != 0 and "model.bidirectional" in err
    data = write(tmp_path / "c.jsonl", [{"input": "ab", "label": "x"}, {"input": "b", "label": "y"}])
    code, _, err = seqlab("train", "--data", data, "--out", tmp_path / "r2", "--model", "bigram", "--steps", 1)
    assert code != 0 and "model.type" in err and err.count("\n") == 1


def test_task_config_defaults():
    t = TaskConfig()
    assert t.type == "auto" and t.pooling == "auto" and t.labels == []


def test_every_example_task_agrees_with_its_verifier_and_the_verifier_can_fail():
    from seqlab.data.example_tasks import TASKS

    for name, task in TASKS.items():
        rows = task.make(300, seed=1)
        assert all(task.check(r) for r in rows), name
        assert task.make(5, seed=1) == rows[:5]  # a seed gives the same examples
        wrong = dict(rows[0])
        if task.type == "classify":
            others = sorted({r["label"] for r in rows} - {wrong["label"]})
            wrong["label"] = others[0]
        elif task.type == "regress":
            wrong["target"] = [v + 1.0 for v in wrong["target"]] if isinstance(wrong["target"], list) else \
                wrong["target"] + 1.0
            if name == "sine-forecast":
                wrong["target"] = wrong["target"][:-1]
        else:
            wrong["target"] = wrong["target"] + "0"
        assert not task.check(wrong), name
        if task.type == "classify":  # both classes in quantity
            counts = {lab: sum(r["label"] == lab for r in rows) for lab in {r["label"] for r in rows}}
            assert min(counts.values()) > 0.3 * len(rows), (name, counts)


def test_data_make_writes_jsonl_that_trains(tmp_path):
    code, out, err = seqlab("data", "make", "majority", "--out", tmp_path / "m.jsonl", "--n", 50, "--json")
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["type"] == "classify"
    rows = read_jsonl(tmp_path / "m.jsonl")
    assert len(rows) == 50 and infer_task_type(rows, "m") == "classify"


def test_rollout_feeds_predictions_back():
    """A model that predicts 'the last value + 1' forecasts last+1, last+2, ... when its own
    outputs are fed back; horizon errors against a truth of last+1, last+3, ... grow."""
    from seqlab.data.examples import EncodedExamples
    from seqlab.supervised import horizon_errors, rollout

    class LastPlusOne(torch.nn.Module):
        def forward(self, x, lengths):
            return x[:, -1, :1] + 1.0

    task = TaskConfig(type="regress", target_mean=[0.0], target_std=[1.0])
    inputs = torch.tensor([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]])[..., None]
    data = EncodedExamples(inputs, torch.tensor([3, 3]), torch.tensor([[4.0, 6.0, 8.0], [6.0, 8.0, 10.0]]))
    assert rollout(LastPlusOne(), data, task, "cpu", 3).tolist() == [[4.0, 5.0, 6.0], [6.0, 7.0, 8.0]]
    errs = horizon_errors(LastPlusOne(), data, task, "cpu", 3)
    assert errs["rollout_mse"] == [0.0, 1.0, 4.0] and "direct_mse" not in errs  # one output: no direct curve


def test_data_check_of_example_tasks(tmp_path):
    rows = [{"input": "12+30", "target": "42"}, {"input": "1+1", "target": "3"}]
    write(tmp_path / "a.jsonl", rows)
    code, out, err = seqlab("data", "check", "add", tmp_path / "a.jsonl", "--json")
    assert code == 0, err
    res = json.loads(out.strip().splitlines()[-1])
    assert res["success_rate"] == 0.5 and res["failures"] == [{"line": 2, "input": "1+1"}]


def test_moe_backbone_adds_its_load_balancing_loss_in_classification():
    from seqlab.models.moe import load_balancing_loss
    from seqlab.supervised import loss_sum

    torch.manual_seed(0)
    bb = build_model(ModelConfig(type="transformer", n_layer=1, n_head=2, n_embd=16, block_size=10, dropout=0.0,
                                 moe_experts=3, moe_aux_coef=0.5), 9)
    m = SequenceModel(bb, 2, "last").train()
    x, lengths, y = torch.randint(3, 9, (4, 6)), torch.tensor([6, 2, 4, 5]), torch.tensor([0, 1, 1, 0])
    total = loss_sum(m, (x, lengths, y), TaskConfig(type="classify", labels=["a", "b"]))
    ce = torch.nn.functional.cross_entropy(m(x, lengths), y, reduction="sum")
    real = (torch.arange(6)[None, :] < lengths[:, None]).reshape(-1)
    probs, chosen = bb.moe_layers[0].routing
    aux = load_balancing_loss(probs[real], chosen[real])[0]
    assert total.item() == pytest.approx((ce + 0.5 * aux * 4).item(), rel=1e-5)
