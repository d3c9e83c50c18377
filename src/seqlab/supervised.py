"""Classification and regression runs (task types classify and regress): the data, the loss
and the metrics that train.py's one loop and `seqlab eval --data` use.

classify: cross-entropy over the run's labels; accuracy, macro-F1 (the unweighted mean of
    each label's F1 = 2 TP / (2 TP + FP + FN), over labels that occur in the truth or the
    predictions) and the confusion matrix (rows: truth, columns: prediction).
regress: the targets are standardised with the training data's mean and standard deviation
    (per target number), the loss is MSE or Huber (delta 1) on that scale, averaged over the
    target's numbers; the metrics are on the original scale: MSE, MAE and R^2 = 1 - SSE / SST
    (SST around the evaluated data's mean, summed over the target's numbers).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .data.examples import (EncodedExamples, EncodedPairs, check_rows, encode_examples, encode_pairs,
                            infer_task_type, numeric_input, read_jsonl)
from .data.tokenizer import BPETokenizer, CharTokenizer, Tokenizer
from .errors import SeqlabError

METRIC_COLUMNS = {"classify": ["accuracy", "macro_f1"], "regress": ["mse", "mae", "r2"], "mlm": ["mlm_accuracy"],
                  "seq2seq": ["exact_match", "cer"]}


@dataclass
class SupervisedData:
    task: str
    tokenizer: Tokenizer
    train: EncodedExamples
    val: EncodedExamples
    block_size: int


def similar_length_batch(by_length: torch.Tensor, size: int, window: int, generator: torch.Generator) -> torch.Tensor:
    """`size` example indices drawn (with replacement, like the plain batches) from a window
    of `window` consecutive examples of `by_length` (all indices sorted by length) that
    starts at a uniformly random place and wraps around the end. Each example is in exactly
    `window` of the n equally likely windows, so it is drawn as often as from uniform
    batches; a batch's lengths span only its window's (little padding). It uses only
    `generator` (saved in checkpoints), so a resumed run draws the same batches."""
    n = by_length.numel()
    window = max(1, min(window, n))
    start = torch.randint(n, (1,), generator=generator)
    return by_length[(start + torch.randint(window, (size,), generator=generator)) % n]


def _label_order(labels: set[str]) -> list[str]:
    try:
        return sorted(labels, key=int)  # "0", "1", "10": as numbers
    except ValueError:
        return sorted(labels)


def prepare(cfg, tokenizer: Tokenizer | None = None) -> SupervisedData:
    """Read, check and split the JSONL file named by the config; fill the run's task type,
    labels, target statistics, input width and block size where the config leaves them open
    (a resumed run keeps its own)."""
    rows = read_jsonl(cfg.data)
    task = infer_task_type(rows, cfg.data) if cfg.task.type == "auto" else cfg.task.type
    if task not in ("classify", "regress", "seq2seq"):
        raise SeqlabError(f"{cfg.data}: task type {task!r} does not take JSONL examples "
                          f"(classify, regress and seq2seq do)")
    check_rows(rows, task, cfg.data)
    cfg.task.type = task
    g = torch.Generator().manual_seed(cfg.train.seed)
    opts = cfg.data_opts
    n_val = min(opts.val_max, int(len(rows) * opts.val_fraction))
    if len(rows) > 1 and opts.val_fraction > 0:
        n_val = max(n_val, 1)
    perm = torch.randperm(len(rows), generator=g).tolist()
    val_rows, train_rows = [rows[i] for i in perm[:n_val]], [rows[i] for i in perm[n_val:]]
    first = numeric_input(rows[0]["input"])
    if first is not None:
        cfg.model.input_dim = len(first[0])
        tokenizer = tokenizer or CharTokenizer.train(["0"])  # unused: the run directory keeps one
        longest = max(len(r["input"]) for r in rows)
    else:
        texts = [r["input"] for r in rows] + ([r["target"] for r in rows] if task == "seq2seq" else [])
        if tokenizer is None:
            tokenizer = (BPETokenizer.train(texts, opts.bpe_vocab_size, opts.specials) if opts.tokenizer == "bpe"
                         else CharTokenizer.train(texts, opts.specials))
        longest = max(len(tokenizer.encode(t)) for t in texts) + 2  # <bos> ... <eos>
    block_size = cfg.model.block_size or longest
    if task == "seq2seq":
        cfg.model.bidirectional = False  # the Seq2Seq model makes its encoder bidirectional itself
        train = encode_pairs(train_rows or val_rows, tokenizer, block_size, cfg.data)
        val = encode_pairs(val_rows or train_rows, tokenizer, block_size, cfg.data)
        return SupervisedData(task, tokenizer, train, val, block_size)
    if task == "classify" and not cfg.task.labels:
        cfg.task.labels = _label_order({str(r["label"]) for r in rows})
    train = encode_examples(train_rows or val_rows, task, tokenizer, block_size, cfg.task.labels, cfg.data)
    val = encode_examples(val_rows or train_rows, task, tokenizer, block_size, cfg.task.labels, cfg.data)
    if task == "regress" and not cfg.task.target_mean:
        cfg.task.target_mean = train.targets.mean(0).tolist()
        std = train.targets.std(0, unbiased=False) if len(train) > 1 else torch.ones(train.targets.size(1))
        cfg.task.target_std = torch.where(std > 0, std, torch.ones_like(std)).tolist()
    return SupervisedData(task, tokenizer, train, val, block_size)


def _scale(task_cfg, device):
    return (torch.tensor(task_cfg.target_mean, device=device), torch.tensor(task_cfg.target_std, device=device))


def loss_sum(model, batch, task_cfg) -> torch.Tensor:
    """The summed per-example loss of a batch (x, lengths, targets) already on the model's
    device; per example: cross-entropy, or the regression loss averaged over its numbers.
    seq2seq (src, src_lengths, decoder inputs, targets): the summed per-token cross-entropy."""
    if task_cfg.type == "seq2seq":
        return model(*batch, loss_reduction="sum")[1]
    x, lengths, y = batch
    out = model(x, lengths)
    if task_cfg.type == "classify":
        loss = F.cross_entropy(out.float(), y, reduction="sum")
    else:
        mean, std = _scale(task_cfg, out.device)
        z = (y - mean) / std
        per = (F.huber_loss(out.float(), z, reduction="none", delta=1.0) if task_cfg.loss == "huber"
               else (out.float() - z) ** 2)
        loss = per.mean(-1).sum()
    backbone = getattr(model, "backbone", None)
    if getattr(backbone, "moe_layers", None) and model.training and backbone.moe_aux_coef:
        # an MoE backbone's load-balancing loss over the real positions, per example as the loss
        real = (torch.arange(x.size(1), device=x.device)[None, :] < lengths[:, None]).reshape(-1)
        loss = loss + backbone.moe_aux_coef * backbone.routing_aux(real) * x.size(0)
    return loss


@torch.no_grad()
def predict(model, data: EncodedExamples, task_cfg, device, batch_size: int = 256) -> torch.Tensor:
    """Outputs for every example, in order: class logits (N, labels), or numbers on the
    original scale (N, k)."""
    was = model.training
    model.eval()
    order = torch.argsort(data.lengths)  # similar lengths together: less padding
    out = torch.empty(len(data), len(task_cfg.labels) if task_cfg.type == "classify" else len(task_cfg.target_mean))
    for i in range(0, len(data), batch_size):
        idx = order[i: i + batch_size]
        x, lengths, _ = data.batch(idx)
        out[idx] = model(x.to(device), lengths.to(device)).float().cpu()
    model.train(was)
    if task_cfg.type == "regress":
        mean, std = _scale(task_cfg, "cpu")
        out = out * std + mean
    return out


def classification_metrics(pred: torch.Tensor, truth: torch.Tensor, n_labels: int) -> dict:
    """accuracy, macro_f1 and the confusion matrix (list of rows: truth i, prediction j)."""
    confusion = torch.zeros(n_labels, n_labels, dtype=torch.long)
    confusion.index_put_((truth, pred), torch.ones_like(truth), accumulate=True)
    tp = confusion.diag().double()
    fp = confusion.sum(0).double() - tp
    fn = confusion.sum(1).double() - tp
    present = (confusion.sum(0) + confusion.sum(1)) > 0
    f1 = 2 * tp / (2 * tp + fp + fn).clamp(min=1e-12)
    return {"accuracy": float(tp.sum() / max(len(truth), 1)), "macro_f1": float(f1[present].mean()),
            "confusion": confusion.tolist()}


def regression_metrics(pred: torch.Tensor, truth: torch.Tensor) -> dict:
    err = (pred.double() - truth.double())
    sst = ((truth.double() - truth.double().mean(0)) ** 2).sum()
    return {"mse": float((err ** 2).mean()), "mae": float(err.abs().mean()),
            "r2": float(1 - (err ** 2).sum() / sst) if sst > 0 else None}


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions of one character each)."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


@torch.no_grad()
def translate(model, src: torch.Tensor, src_lengths: torch.Tensor, tokenizer: Tokenizer, max_new_tokens: int,
              rule=None, device="cpu", beam: int = 0) -> list[str]:
    """Decoded targets for sources (B, S) through the one sampler (greedy by default)."""
    from .sampling import DecodeRule, beam_search, generate

    was = model.training
    model.eval()
    bound = model.bind(src.to(device), src_lengths.to(device))
    prompts = [[tokenizer.bos_id]] * src.size(0)
    if beam:
        rows = beam_search(bound, prompts, max_new_tokens, beam, eos_id=tokenizer.eos_id,
                           pad_id=tokenizer.pad_id).rows()
    else:
        rows = generate(bound, prompts, max_new_tokens, rule or DecodeRule(temperature=0.0), eos_id=tokenizer.eos_id,
                        pad_id=tokenizer.pad_id).rows()
    model.train(was)
    return [tokenizer.decode(r) for r in rows]


def evaluate_seq2seq(model, data: EncodedPairs, tokenizer: Tokenizer, device, batch_size: int = 256) -> dict:
    """val_loss (per target token), exact_match and cer (character error rate: total edit
    distance over total target length) of greedy decoding."""
    total, count, exact, errors, chars = 0.0, 0, 0, 0, 0
    max_new = int(data.tgt_lengths.max())  # the longest target + <eos>, at least
    for i in range(0, len(data), batch_size):
        idx = torch.arange(i, min(i + batch_size, len(data)))
        src, sl, tgt_in, targets = (t.to(device) for t in data.batch(idx))
        with torch.no_grad():
            was = model.training
            model.eval()
            total += float(model(src, sl, tgt_in, targets, loss_reduction="sum")[1])
            model.train(was)
        count += int((targets != -1).sum())
        got = translate(model, src, sl, tokenizer, max_new, device=device)
        for g, row, n in zip(got, data.tgt[idx], data.tgt_lengths[idx].tolist()):
            want = tokenizer.decode(row[1: n - 1].tolist())
            exact += g == want
            errors += edit_distance(g, want)
            chars += len(want)
    return {"val_loss": total / max(count, 1), "exact_match": exact / max(len(data), 1),
            "cer": errors / max(chars, 1)}


def evaluate(model, data: EncodedExamples, task_cfg, device, tokenizer: Tokenizer | None = None) -> dict:
    """val_loss (the training loss's per-example mean; per token for seq2seq) and the task's
    metrics."""
    if task_cfg.type == "seq2seq":
        return evaluate_seq2seq(model, data, tokenizer, device)
    out = predict(model, data, task_cfg, device)
    if task_cfg.type == "classify":
        res = classification_metrics(out.argmax(-1), data.targets, len(task_cfg.labels))
        res["val_loss"] = float(F.cross_entropy(out, data.targets))
        return res
    res = regression_metrics(out, data.targets)
    mean, std = _scale(task_cfg, "cpu")
    z, zhat = (data.targets - mean) / std, (out - mean) / std
    per = F.huber_loss(zhat, z, reduction="none", delta=1.0) if task_cfg.loss == "huber" else (zhat - z) ** 2
    res["val_loss"] = float(per.mean(-1).mean())
    return res


def evaluate_file(model, cfg, tokenizer: Tokenizer, path, device, plot_dir=None, rollout_steps: int = 0) -> dict:
    """`seqlab eval RUN --data FILE.jsonl`: the run's metrics on another file's examples
    (same task, its labels); with plot_dir, the confusion matrix (classify) or predictions
    against the truth (regress) as PNG."""
    from pathlib import Path

    if cfg.task.type not in ("classify", "regress", "seq2seq"):
        raise SeqlabError(f"--data: {path} is for classify/regress/seq2seq runs; this run is a {cfg.task.type} run "
                          f"(use --task)")
    rows = read_jsonl(path)
    check_rows(rows, cfg.task.type, str(path))
    if cfg.task.type == "seq2seq":
        res = {"examples": len(rows), **evaluate_seq2seq(
            model, encode_pairs(rows, tokenizer, cfg.model.block_size, str(path)), tokenizer, device)}
        res["loss"] = res.pop("val_loss")
        return res
    first = numeric_input(rows[0]["input"])
    if (first is None) != (cfg.model.input_dim == 0) or (first is not None and len(first[0]) != cfg.model.input_dim):
        raise SeqlabError(f"{path}:{rows[0]['_line']}: key 'input': the run takes "
                          f"{'text' if cfg.model.input_dim == 0 else f'{cfg.model.input_dim} number(s) per step'}")
    data = encode_examples(rows, cfg.task.type, tokenizer, cfg.model.block_size, cfg.task.labels, str(path))
    scored = data
    if cfg.task.type == "regress" and data.targets.size(1) != len(cfg.task.target_mean):
        k = len(cfg.task.target_mean)
        if not rollout_steps or data.targets.size(1) < k:
            raise SeqlabError(f"{path}:{rows[0]['_line']}: key 'target' has {data.targets.size(1)} numbers, the run "
                              f"predicts {k} (more are allowed with --rollout: the horizon's truth)")
        scored = EncodedExamples(data.inputs, data.lengths, data.targets[:, :k])  # metrics on the first k
    res = {"examples": len(data), **evaluate(model, scored, cfg.task, device)}
    res["loss"] = res.pop("val_loss")
    if rollout_steps:
        if cfg.task.type != "regress":
            raise SeqlabError("--rollout is for regress runs on numeric series")
        res.update(horizon_errors(model, data, cfg.task, device, rollout_steps))
        if plot_dir is not None:
            from .plots import horizon_curve

            res["rollout_plot"] = str(Path(plot_dir) / "eval-rollout.png")
            horizon_curve(res, Path(res["rollout_plot"]), title=f"{Path(path).name}: error by horizon")
    if plot_dir is not None:
        from .plots import confusion_matrix, predictions_vs_truth

        if cfg.task.type == "classify":
            res["plot"] = str(Path(plot_dir) / "eval-confusion.png")
            confusion_matrix(res["confusion"], cfg.task.labels, Path(res["plot"]), title=f"{Path(path).name}")
        else:
            res["plot"] = str(Path(plot_dir) / "eval-predictions.png")
            predictions_vs_truth(predict(model, scored, cfg.task, device), scored.targets, Path(res["plot"]),
                                 title=f"{Path(path).name}: R^2 {res['r2'] if res['r2'] is not None else float('nan'):.3f}")
    return res


@torch.no_grad()
def rollout(model, data: EncodedExamples, task_cfg, device, steps: int) -> torch.Tensor:
    """Forecast `steps` values ahead by feeding predictions back: the model's first output is
    taken as the next value, appended to the input window (whose oldest value drops out), and
    the model runs again. data: numeric inputs of one number per step, all the same length.
    Returns (N, steps) on the original scale."""
    x, lengths = data.inputs.clone(), data.lengths
    if x.dim() != 3 or x.size(-1) != 1 or bool((lengths != lengths[0]).any()):
        raise SeqlabError("--rollout needs inputs of one number per step, all of the same length")
    preds = []
    for _ in range(steps):
        nxt = predict(model, EncodedExamples(x, lengths, data.targets), task_cfg, device)[:, :1]  # (N, 1)
        preds.append(nxt)
        x = torch.cat([x[:, 1:], nxt[:, :, None]], 1)
    return torch.cat(preds, 1)


def horizon_errors(model, data: EncodedExamples, task_cfg, device, steps: int) -> dict:
    """Mean squared error at each horizon 1..steps: fed back (rollout), and read directly from
    the model's outputs where it predicts that many values at once."""
    k = min(steps, data.targets.size(1))
    truth = data.targets[:, :k]
    fed = rollout(model, data, task_cfg, device, k)
    res = {"rollout_mse": ((fed - truth) ** 2).mean(0).tolist()}
    out = predict(model, data, task_cfg, device)
    if out.size(1) >= k:
        res["direct_mse"] = ((out[:, :k] - truth) ** 2).mean(0).tolist()
    return res
