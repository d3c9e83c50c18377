"""Supervised examples in JSONL: one JSON object per line.

    classify  {"input": "((a)b)", "label": "yes"}
    regress   {"input": "3141", "target": 9.0}             text in, numbers out
              {"input": [0.1, 0.5, ...], "target": [0.2, 0.3]}   numbers in (one per step,
              or a list per step), numbers out
    seq2seq   {"input": "abc", "target": "cba"}

The task type is read from the keys and value types (infer_task_type) unless the config
names it. Errors name the file, the line and the key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import SeqlabError
from .lines import read_data_bytes
from .tokenizer import Tokenizer

TASK_KEYS = {"classify": "label", "regress": "target", "seq2seq": "target"}


def iter_jsonl(path: str | Path) -> list[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSONL file; a file that is missing,
    not UTF-8, or has a line that is not a JSON object fails naming the file and line."""
    path = Path(path)
    raw = read_data_bytes(path)
    rows = []
    for lineno, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError:
            raise SeqlabError(f"{path}:{lineno}: not valid UTF-8") from None
        except json.JSONDecodeError as e:
            raise SeqlabError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise SeqlabError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        rows.append((lineno, obj))
    if not rows:
        raise SeqlabError(f"{path}: no examples (the file is empty)")
    return rows


def read_jsonl(path: str | Path) -> list[dict]:
    """The objects of a JSONL file, each with its line number under "_line" (for errors)."""
    return [{**obj, "_line": lineno} for lineno, obj in iter_jsonl(path)]


def is_jsonl(path: str | Path) -> bool:
    return Path(path).suffix.lower() in (".jsonl", ".ndjson")


def infer_task_type(rows: list[dict], source: str) -> str:
    """classify (a "label"), regress (a numeric "target"), seq2seq (a string "target")."""
    first = rows[0]
    if "input" not in first:
        raise SeqlabError(f"{source}:{first['_line']}: missing key 'input'")
    if "label" in first:
        return "classify"
    if "target" in first:
        t = first["target"]
        if isinstance(t, str):
            return "seq2seq"
        if _is_number(t) or (isinstance(t, list) and t and all(_is_number(v) for v in t)):
            return "regress"
        raise SeqlabError(f"{source}:{first['_line']}: key 'target' must be a string or numbers, got {t!r:.40}")
    raise SeqlabError(f"{source}:{first['_line']}: no 'label' (classify) or 'target' (regress, seq2seq) key; "
                      f"plain text files (one example per line) are for language modelling")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def numeric_input(v) -> list[list[float]] | None:
    """A numeric input as (T, d) rows: [1.0, 2.0] -> [[1.0], [2.0]]; [[..], [..]] as is;
    None for a string input."""
    if isinstance(v, str):
        return None
    if isinstance(v, list) and v and all(_is_number(x) for x in v):
        return [[float(x)] for x in v]
    if isinstance(v, list) and v and all(isinstance(r, list) and r and all(_is_number(x) for x in r) for r in v):
        return [[float(x) for x in r] for r in v]
    raise ValueError


def check_rows(rows: list[dict], task: str, source: str) -> None:
    """Every row has 'input' and its task's key, with values of the right type, and every
    input is of the first one's kind (text, or numbers with as many per step)."""
    key = TASK_KEYS[task]
    kind = None  # "text" or the number of values per step
    for r in rows:
        where = f"{source}:{r['_line']}"
        for k in ("input", key):
            if k not in r:
                raise SeqlabError(f"{where}: missing key '{k}'")
        try:
            num = numeric_input(r["input"])
        except ValueError:
            raise SeqlabError(f"{where}: key 'input' must be a string, a list of numbers or a list of lists "
                              f"of numbers (the same count in each)") from None
        if num is not None and (task != "regress" or len({len(step) for step in num}) != 1):
            raise SeqlabError(f"{where}: key 'input': numeric inputs are for regression, with the same count of "
                              f"numbers at every step" if task == "regress" else
                              f"{where}: key 'input': numeric inputs are for regression; {task} takes strings")
        this = "text" if num is None else len(num[0])
        if kind is None:
            kind = this
        elif this != kind:
            raise SeqlabError(f"{where}: key 'input': every example must have the first one's kind of input "
                              f"({'text' if kind == 'text' else f'{kind} number(s) per step'})")
        v = r[key]
        if task == "classify" and (not isinstance(v, (str, int)) or isinstance(v, bool)):
            raise SeqlabError(f"{where}: key 'label' must be a string or an integer, got {v!r:.40}")
        if task == "seq2seq" and not isinstance(v, str):
            raise SeqlabError(f"{where}: key 'target' must be a string, got {v!r:.40}")
        if task == "regress":
            vals = v if isinstance(v, list) else [v]
            if not vals or not all(_is_number(x) for x in vals):
                raise SeqlabError(f"{where}: key 'target' must be a number or a list of numbers, got {v!r:.40}")
            if len(vals) != _target_dim(rows[0]):
                raise SeqlabError(f"{where}: key 'target' has {len(vals)} numbers, the first example has "
                                  f"{_target_dim(rows[0])}")


def _target_dim(row: dict) -> int:
    t = row["target"]
    return len(t) if isinstance(t, list) else 1


@dataclass
class EncodedExamples:
    """Inputs right-padded to one tensor, with their lengths and targets.

    Token inputs are `<bos> ids <eos>` (the causal model's last position has read the whole
    input); numeric inputs are their (T, d) rows. targets: class ids (N,) long, or (N, k) float."""

    inputs: torch.Tensor  # (N, L) long, or (N, L, d) float
    lengths: torch.Tensor  # (N,) real positions per input
    targets: torch.Tensor

    def __len__(self) -> int:
        return self.inputs.size(0)

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(inputs trimmed to the batch's longest, lengths, targets) of rows idx."""
        lengths = self.lengths[idx]
        width = int(lengths.max())
        return self.inputs[idx, :width], lengths, self.targets[idx]


@dataclass
class EncodedPairs:
    """seq2seq examples: sources `<bos> ids <eos>` right-padded with their lengths, and
    targets `<bos> ids <eos>` right-padded (pad_id) with theirs."""

    src: torch.Tensor  # (N, S) long
    src_lengths: torch.Tensor  # (N,)
    tgt: torch.Tensor  # (N, L) long
    tgt_lengths: torch.Tensor  # (N,) <bos> and <eos> included
    pad_id: int

    def __len__(self) -> int:
        return self.src.size(0)

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(src, src_lengths, decoder inputs <bos> + target, targets target + <eos> with -1
        on padding), trimmed to the batch's longest."""
        sl, tl = self.src_lengths[idx], self.tgt_lengths[idx]
        src = self.src[idx, : int(sl.max())]
        tgt = self.tgt[idx, : int(tl.max())]
        targets = tgt[:, 1:].clone()
        targets[torch.arange(targets.size(1))[None, :] >= (tl - 1)[:, None]] = -1
        return src, sl, tgt[:, :-1], targets


def encode_pairs(rows: list[dict], tokenizer: Tokenizer, block_size: int, source: str) -> EncodedPairs:
    """Encode checked seq2seq rows; a source or target longer than block_size (with <bos> and
    <eos>) fails with the example's line."""
    def enc(key: str) -> tuple[torch.Tensor, torch.Tensor]:
        ids = [tokenizer.encode(r[key]) for r in rows]
        for r, e in zip(rows, ids):
            if len(e) + 2 > block_size:
                raise SeqlabError(f"{source}:{r['_line']}: key '{key}' has {len(e)} tokens; the model's block_size "
                                  f"{block_size} fits {block_size - 2} (with <bos> and <eos>)")
        out = torch.full((len(rows), max(len(e) for e in ids) + 2), tokenizer.pad_id, dtype=torch.long)
        for i, e in enumerate(ids):
            out[i, : len(e) + 2] = torch.tensor([tokenizer.bos_id, *e, tokenizer.eos_id])
        return out, torch.tensor([len(e) + 2 for e in ids])

    src, sl = enc("input")
    tgt, tl = enc("target")
    return EncodedPairs(src, sl, tgt, tl, tokenizer.pad_id)


def encode_examples(rows: list[dict], task: str, tokenizer: Tokenizer | None, block_size: int,
                    labels: list[str] | None, source: str) -> EncodedExamples:
    """Encode checked rows; token inputs longer than block_size fail with the example's line."""
    num = [numeric_input(r["input"]) for r in rows]
    if num[0] is not None:
        L = max(len(n) for n in num)
        if L > block_size:
            long = next(r for r, n in zip(rows, num) if len(n) > block_size)
            raise SeqlabError(f"{source}:{long['_line']}: input of {len(num[rows.index(long)])} steps exceeds "
                              f"the model's block_size {block_size}")
        inputs = torch.zeros(len(rows), L, len(num[0][0]))
        for i, n in enumerate(num):
            inputs[i, : len(n)] = torch.tensor(n)
        lengths = torch.tensor([len(n) for n in num])
    else:
        ids = [tokenizer.encode(r["input"]) for r in rows]
        for r, e in zip(rows, ids):
            if len(e) + 2 > block_size:
                raise SeqlabError(f"{source}:{r['_line']}: input of {len(e)} tokens does not fit the model's "
                                  f"block_size {block_size} (with <bos> and <eos>)")
        L = max(len(e) for e in ids) + 2
        inputs = torch.full((len(rows), L), tokenizer.pad_id, dtype=torch.long)
        for i, e in enumerate(ids):
            inputs[i, : len(e) + 2] = torch.tensor([tokenizer.bos_id, *e, tokenizer.eos_id])
        lengths = torch.tensor([len(e) + 2 for e in ids])
    if task == "classify":
        index = {lab: i for i, lab in enumerate(labels)}
        unknown = next((r for r in rows if str(r["label"]) not in index), None)
        if unknown is not None:
            raise SeqlabError(f"{source}:{unknown['_line']}: label {str(unknown['label'])!r} is not one of the "
                              f"run's labels {labels}")
        targets = torch.tensor([index[str(r["label"])] for r in rows])
    else:
        targets = torch.tensor([r["target"] if isinstance(r["target"], list) else [r["target"]] for r in rows],
                               dtype=torch.float32)
    return EncodedExamples(inputs, lengths, targets)
