"""Line datasets (makemore's convention: one example per line of a UTF-8 file).

Every example is encoded as `<bos> tokens <eos>`; a batch holds inputs
`x = seq[:-1]` and targets `y = seq[1:]`, padded with `<pad>` in x and -1 in y
(ignored by the loss).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import SeqlabError
from .tokenizer import Tokenizer


def read_data_bytes(path: Path) -> bytes:
    """A data file's bytes without an editor's UTF-8 byte-order mark; a missing file or a
    folder is one error line naming it."""
    try:
        return path.read_bytes().removeprefix(b"\xef\xbb\xbf")
    except FileNotFoundError:
        raise SeqlabError(f"data file not found: {path}") from None
    except IsADirectoryError:
        raise SeqlabError(f"data path is a directory, not a file: {path}") from None


def read_lines(path: str | Path) -> list[str]:
    """Read non-empty lines (stripped of surrounding whitespace) from a UTF-8 file.

    Errors name the file and, for bad bytes, the line.
    """
    path = Path(path)
    raw = read_data_bytes(path)
    lines = []
    for lineno, chunk in enumerate(raw.split(b"\n"), start=1):
        try:
            text = chunk.decode("utf-8")
        except UnicodeDecodeError as e:
            raise SeqlabError(
                f"{path}:{lineno}: not valid UTF-8 (byte 0x{chunk[e.start]:02x} at column {e.start + 1})"
            ) from None
        text = text.strip()
        if text:
            lines.append(text)
    if not lines:
        raise SeqlabError(f"{path}: no examples (the file is empty or has only blank lines)")
    return lines


def split_lines(lines: list[str], val_fraction: float, val_max: int, seed: int) -> tuple[list[str], list[str]]:
    """Deterministic train/validation split: the same seed gives the same split."""
    n_val = min(val_max, int(len(lines) * val_fraction))
    if len(lines) > 1 and val_fraction > 0:
        n_val = max(n_val, 1)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(lines), generator=g).tolist()
    val = [lines[i] for i in perm[:n_val]]
    train = [lines[i] for i in perm[n_val:]]
    return train, val


@dataclass
class EncodedLines:
    """All examples as one padded tensor: row i is `<bos> ids <eos> <pad>...`."""

    tokens: torch.Tensor  # (N, L+2) long
    lengths: torch.Tensor  # (N,) number of ids without bos/eos

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def target_count(self, idx: torch.Tensor) -> int:
        """How many targets rows `idx` have (ids + eos each): batch()'s y != -1, uncounted."""
        return int(self.lengths[idx].sum()) + len(idx)

    def batch(self, idx: torch.Tensor, pad_id: int, trim: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets for rows `idx`, trimmed to the batch's longest row."""
        rows = self.tokens[idx]
        if trim:
            width = int(self.lengths[idx].max()) + 1
            rows = rows[:, : width + 1]
        x = rows[:, :-1]
        y = rows[:, 1:].clone()
        y[y == pad_id] = -1
        return x, y

    def packed_batch(self, idx: torch.Tensor, pad_id: int, width: int = 0) -> tuple[torch.Tensor, ...]:
        """Rows `idx` packed several to a row: (x, y, positions, starts), each (R, W).

        The same targets as batch(idx) with far less padding when lengths vary (lines of
        50-200 characters: 36% of a padded batch is padding). Sequences go first-fit,
        longest first, into rows `width` wide (at least the longest sequence; wider rows
        fill better, Transformer.packed_width picks it); positions count from 0
        in each sequence, and starts[r, t] is the column where token t's sequence begins:
        a Transformer given both attends within sequences only (a block-diagonal causal
        mask), so its loss and gradients equal the padded batch's up to float rounding.
        Padding at a row's end is a sequence of its own with targets -1."""
        seq_len = (self.lengths[idx] + 1).tolist()  # inputs per sequence: <bos> + ids
        width = max(width, max(seq_len))
        fill: list[int] = []  # tokens placed in each packed row so far
        where = [(0, 0)] * len(seq_len)  # (row, column) of each sequence's first token
        for i in sorted(range(len(seq_len)), key=lambda i: -seq_len[i]):
            r = next((r for r, f in enumerate(fill) if f + seq_len[i] <= width), len(fill))
            if r == len(fill):
                fill.append(0)
            where[i] = (r, fill[r])
            fill[r] += seq_len[i]
        n_rows = len(fill)
        lens = torch.tensor(seq_len)
        seq_of = torch.repeat_interleave(torch.arange(len(seq_len)), lens)  # each token's sequence
        t = torch.arange(len(seq_of)) - torch.repeat_interleave(lens.cumsum(0) - lens, lens)  # index in it
        rc = torch.tensor(where)
        flat = rc[seq_of, 0] * width + rc[seq_of, 1] + t  # each token's place in the packed rows
        src = self.tokens[idx]
        x = torch.full((n_rows * width,), pad_id, dtype=torch.long)
        y = torch.full((n_rows * width,), -1, dtype=torch.long)
        positions = torch.zeros(n_rows * width, dtype=torch.long)
        # padding's own sequence starts where its row's real tokens end
        starts = torch.tensor(fill, dtype=torch.int32).repeat_interleave(width)
        x[flat] = src[seq_of, t]
        y[flat] = src[seq_of, t + 1]
        positions[flat] = t
        starts[flat] = rc[seq_of, 1].to(torch.int32)
        return tuple(v.view(n_rows, width) for v in (x, y, positions, starts))


def encode_lines(
    lines: list[str],
    tokenizer: Tokenizer,
    block_size: int,
    truncate: bool = False,
    source: str = "data",
) -> EncodedLines:
    """Encode lines; a line longer than the context fails (or is cut if `truncate`)."""
    max_ids = block_size - 1  # the input holds <bos> + ids; the target row ends with <eos>
    encoded = []
    for i, line in enumerate(lines):
        ids = tokenizer.encode(line)
        if len(ids) > max_ids:
            if not truncate:
                raise SeqlabError(
                    f"{source}: example {i + 1} has {len(ids)} tokens but the model's context "
                    f"(block_size={block_size}) fits {max_ids}; raise model.block_size or pass --truncate"
                )
            ids = ids[:max_ids]
        encoded.append(ids)
    width = max(len(e) for e in encoded) + 2
    tokens = torch.full((len(encoded), width), tokenizer.pad_id, dtype=torch.long)
    for i, ids in enumerate(encoded):
        tokens[i, 0] = tokenizer.bos_id
        tokens[i, 1 : len(ids) + 1] = torch.tensor(ids, dtype=torch.long)
        tokens[i, len(ids) + 1] = tokenizer.eos_id
    lengths = torch.tensor([len(e) for e in encoded], dtype=torch.long)
    return EncodedLines(tokens, lengths)
