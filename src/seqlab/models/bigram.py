"""Bigram: a (V, V) table of next-token logits indexed by the current token."""

from __future__ import annotations

import torch
import torch.nn as nn

from .base import SeqModel, last_valid


class Bigram(SeqModel):
    def __init__(self, vocab_size: int, cfg):
        super().__init__()
        self.table = nn.Parameter(torch.zeros(vocab_size, vocab_size))

    def logits(self, idx):
        return self.table[idx]  # (B, T, V)

    # State: nothing; the next logits depend only on the last token.
    def prefill(self, idx, lengths, total_len=None):
        return self.table[last_valid(idx, lengths)], None

    def step(self, tokens, state):
        return self.table[tokens], None

    def select_state(self, state, index):
        return None
