"""MLP language model (Bengio et al. 2003): embed the previous `mlp_context`
tokens, concatenate, one tanh hidden layer, project to the vocabulary.

Positions before the start of the sequence hold a dedicated "blank" embedding
(index V), as in makemore.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import SeqModel


class MLP(SeqModel):
    def __init__(self, vocab_size: int, cfg):
        super().__init__()
        self.context = cfg.mlp_context
        self.blank = vocab_size
        hidden = cfg.n_hidden or 4 * cfg.n_embd
        self.wte = nn.Embedding(vocab_size + 1, cfg.n_embd)
        self.hidden = nn.Linear(self.context * cfg.n_embd, hidden)
        self.out = nn.Linear(hidden, vocab_size)

    def _from_windows(self, windows):
        # windows (..., context) token ids, oldest first
        emb = self.wte(windows)  # (..., context, C)
        h = torch.tanh(self.hidden(emb.flatten(-2)))
        return self.out(h)

    def logits(self, idx):
        B, T = idx.shape
        padded = F.pad(idx, (self.context - 1, 0), value=self.blank)  # (B, T + ctx - 1)
        windows = padded.unfold(1, self.context, 1)  # (B, T, ctx)
        return self._from_windows(windows)

    # State: the last `context` tokens of each row.
    def prefill(self, idx, lengths, total_len=None):
        B = idx.size(0)
        padded = F.pad(idx, (self.context, 0), value=self.blank)
        cols = lengths.view(B, 1) + torch.arange(self.context, device=idx.device).view(1, -1)
        window = padded.gather(1, cols)  # the `context` tokens ending at each row's last real token
        return self._from_windows(window), window

    def step(self, tokens, window):
        window = torch.cat([window[:, 1:], tokens.view(-1, 1)], dim=1)
        return self._from_windows(window), window

    def select_state(self, window, index):
        return window[index]
