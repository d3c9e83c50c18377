"""Recurrent models: vanilla RNN (tanh), LSTM and GRU.

They use torch.nn's multi-layer modules, which run fused kernels (cuDNN on a
GPU) over the whole sequence instead of a Python loop over time. The initial
hidden (and cell) state is learned, as in makemore's RNN.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .base import SeqModel

CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


class Recurrent(SeqModel):
    def __init__(self, vocab_size: int, cfg):
        super().__init__()
        self.kind = cfg.type
        hidden = cfg.n_hidden or cfg.n_embd
        # encoders (classification, regression) may read both ways: encode() returns the
        # forward and backward states side by side
        self.directions = 2 if getattr(cfg, "bidirectional", False) else 1
        self.hidden_size = hidden * self.directions
        self.wte = nn.Embedding(vocab_size, cfg.n_embd)
        self.win = nn.Linear(cfg.input_dim, cfg.n_embd) if getattr(cfg, "input_dim", 0) else None
        self.rnn = CELLS[cfg.type](
            cfg.n_embd, hidden, num_layers=cfg.n_layer, batch_first=True,
            dropout=cfg.dropout if cfg.n_layer > 1 else 0.0, bidirectional=self.directions == 2,
        )
        self.h0 = nn.Parameter(torch.zeros(cfg.n_layer * self.directions, 1, hidden))
        if self.kind == "lstm":
            self.c0 = nn.Parameter(torch.zeros(cfg.n_layer * self.directions, 1, hidden))
        self.lm_head = nn.Linear(hidden, vocab_size)

    def _initial_state(self, batch_size: int):
        h = self.h0.expand(-1, batch_size, -1).contiguous()
        if self.kind == "lstm":
            return (h, self.c0.expand(-1, batch_size, -1).contiguous())
        return h

    def encode(self, x, lengths):
        """States (B, T, H * directions) for x (B, T) token ids or (B, T, input_dim) numbers,
        row b real up to lengths[b]: packed, so the backward direction starts at each row's
        last real step and padding changes nothing (zeros at padded steps)."""
        emb = self.win(x) if x.is_floating_point() else self.wte(x)
        packed = pack_padded_sequence(emb, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(packed, self._initial_state(x.size(0)))
        return pad_packed_sequence(out, batch_first=True, total_length=x.size(1))[0]

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
