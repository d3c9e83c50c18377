"""Recurrent models: vanilla RNN (tanh), LSTM and GRU.

They use torch.nn's multi-layer modules, which run fused kernels (cuDNN on a
GPU) over the whole sequence instead of a Python loop over time. The initial
hidden (and cell) state is learned, as in makemore's RNN.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn.utils.rnn import pack_padded_sequence

from .base import SeqModel

CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


class Recurrent(SeqModel):
    def __init__(self, vocab_size: int, cfg):
        super().__init__()
        self.kind = cfg.type
        hidden = cfg.n_hidden or cfg.n_embd
        self.wte = nn.Embedding(vocab_size, cfg.n_embd)
        self.rnn = CELLS[cfg.type](
            cfg.n_embd, hidden, num_layers=cfg.n_layer, batch_first=True,
            dropout=cfg.dropout if cfg.n_layer > 1 else 0.0,
        )
        self.h0 = nn.Parameter(torch.zeros(cfg.n_layer, 1, hidden))
        if self.kind == "lstm":
            self.c0 = nn.Parameter(torch.zeros(cfg.n_layer, 1, hidden))
        self.lm_head = nn.Linear(hidden, vocab_size)

    def _initial_state(self, batch_size: int):
        h = self.h0.expand(-1, batch_size, -1).contiguous()
        if self.kind == "lstm":
            return (h, self.c0.expand(-1, batch_size, -1).contiguous())
        return h

    def logits(self, idx):
        out, _ = self.rnn(self.wte(idx), self._initial_state(idx.size(0)))  # (B, T, H)
        return self.lm_head(out)

    # State: h (n_layer, B, H), and c for the LSTM.
    def prefill(self, idx, lengths, total_len=None):
        B = idx.size(0)
        packed = pack_padded_sequence(self.wte(idx), lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, state = self.rnn(packed, self._initial_state(B))
        top = (state[0] if self.kind == "lstm" else state)[-1]  # (B, H) at each row's last token
        return self.lm_head(top), state

    def step(self, tokens, state):
        out, state = self.rnn(self.wte(tokens).unsqueeze(1), state)
        return self.lm_head(out[:, 0]), state

    def select_state(self, state, index):
        if self.kind == "lstm":
            return (state[0][:, index], state[1][:, index])
        return state[:, index]
