"""Recurrent encoder-decoder with attention (task seq2seq, model rnn / lstm / gru).

The encoder is the zoo's bidirectional RNN (its `encode`: forward and backward states side by
side, 2H wide, zeros past each source's end). The decoder is an RNN of the same kind started
from tanh(W [forward state at the source's end; backward state at its start]) in every layer;
at each target position its output h_t attends over the encoder states m_s (Luong et al.
2015, attention after the recurrence, so teacher forcing runs as one call):

    dot       score(h_t, m_s) = h_t . (W_k m_s)                         (Luong's "general")
    additive  score(h_t, m_s) = v . tanh(W_q h_t + W_k m_s)              (Bahdanau et al. 2015)
    a_ts = softmax_s(score) over real source positions,  c_t = sum_s a_ts m_s
    logits_t = lm_head(tanh(W_c [h_t; c_t]))

With `seq2seq_heads` = n > 1 there are n such distributions per target position, each with its
own context c_t^i, and W_c reads [h_t; c_t^1; ...; c_t^n]: a head per source position the output
needs (addition in written order reads digit j of both numbers). dot: h_t and W_k m_s split
into n slices of H/n, score^i = h_t^i . (W_k m_s)^i / sqrt(H/n) (unscaled when n = 1: Luong's
score, as runs made before heads existed were trained); additive: one v^i per head over the
same tanh features.

Decoding runs through seqlab's one sampler like the Transformer's: `bind` conditions the
decoder on encoded sources, its state is (RNN state, memory, mask).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence

from .base import SeqModel, token_loss
from .rnn import CELLS, Recurrent


class RNNSeq2Seq(nn.Module):
    def __init__(self, vocab_size: int, cfg, attention: str = "dot", heads: int = 1):
        super().__init__()
        if attention not in ("dot", "additive"):
            raise ValueError(f"unknown attention {attention!r}")
        self.kind, self.attention, self.heads = cfg.type, attention, heads
        H = cfg.n_hidden or cfg.n_embd
        if heads < 1 or H % heads:
            raise ValueError(f"seq2seq_heads {heads} must be >= 1 and divide the hidden width {H}")
        self.encoder = Recurrent(vocab_size, dataclasses.replace(cfg, bidirectional=True))
        self.encoder.lm_head = None  # its states are the memory
        self.wte = nn.Embedding(vocab_size, cfg.n_embd)
        self.decoder = CELLS[cfg.type](cfg.n_embd, H, num_layers=cfg.n_layer, batch_first=True,
                                       dropout=cfg.dropout if cfg.n_layer > 1 else 0.0)
        self.bridge = nn.Linear(2 * H, H)  # the encoder's two final states -> the decoder's start
        self.key = nn.Linear(2 * H, H, bias=False)  # W_k
        if attention == "additive":
            self.query = nn.Linear(H, H, bias=False)  # W_q
            self.v = nn.Linear(H, heads, bias=False)
        self.combine = nn.Linear((1 + 2 * heads) * H, H)
        self.lm_head = nn.Linear(H, vocab_size)
        self.n_layer = cfg.n_layer
        self.max_len = None  # recurrent: no context limit

    def memory(self, src, src_lengths):
        """(encoder states (B, S, 2H), mask of real positions (B, S), initial decoder state)."""
        states = self.encoder.encode(src, src_lengths)
        H = states.size(-1) // 2
        rows = torch.arange(src.size(0), device=src.device)
        last = torch.cat([states[rows, src_lengths - 1, :H], states[:, 0, H:]], -1)
        h = torch.tanh(self.bridge(last)).unsqueeze(0).repeat(self.n_layer, 1, 1).contiguous()
        start = (h, torch.zeros_like(h)) if self.kind == "lstm" else h
        mask = torch.arange(src.size(1), device=src.device)[None, :] < src_lengths[:, None]
        return states, mask, start

    def scores(self, h, memory, mask):
        """Attention scores (B, n, T, S) of decoder outputs h (B, T, H) over memory (B, S, 2H),
        n = seq2seq_heads."""
        keys = self.key(memory)  # (B, S, H)
        n = self.heads
        if self.attention == "dot":
            B, T, H = h.shape
            q = h.view(B, T, n, H // n).transpose(1, 2)  # (B, n, T, H/n)
            k = keys.view(B, -1, n, H // n).transpose(1, 2)
            s = q @ k.transpose(2, 3)
            if n > 1:
                s = s / (H // n) ** 0.5
        else:
            s = self.v(torch.tanh(self.query(h)[:, :, None, :] + keys[:, None, :, :])).permute(0, 3, 1, 2)
        return s.masked_fill(~mask[:, None, None, :], float("-inf"))

    def output(self, h, memory, mask):
        """Logits (B, T, V) for decoder outputs h (B, T, H)."""
        weights = F.softmax(self.scores(h, memory, mask), dim=-1)  # (B, n, T, S)
        context = weights @ memory[:, None]  # (B, n, T, 2H)
        context = context.transpose(1, 2).flatten(2)  # (B, T, n * 2H)
        return self.lm_head(torch.tanh(self.combine(torch.cat([h, context], -1))))

    def forward(self, src, src_lengths, tgt_in, targets=None, loss_reduction: str = "mean"):
        memory, mask, start = self.memory(src, src_lengths)
        h, _ = self.decoder(self.wte(tgt_in), start)
        logits = self.output(h, memory, mask)
        return logits, None if targets is None else token_loss(logits, targets, loss_reduction)

    def cross_attention_maps(self, src, src_lengths, tgt_in) -> list[torch.Tensor]:
        """The attention weights as one layer: [(B, heads, T, S)] (for heatmaps)."""
        memory, mask, start = self.memory(src, src_lengths)
        h, _ = self.decoder(self.wte(tgt_in), start)
        return [F.softmax(self.scores(h, memory, mask), dim=-1)]

    def bind(self, src, src_lengths) -> "BoundRNNDecoder":
        return BoundRNNDecoder(self, *self.memory(src, src_lengths))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


class BoundRNNDecoder(SeqModel):
    """The recurrent decoder conditioned on encoded sources (row b continues source b)."""

    conditioned = True  # rows with equal prompts still differ: never merged by the sampler

    def __init__(self, model: RNNSeq2Seq, memory, mask, start):
        super().__init__()
        self.model = model
        self.memory, self.mask, self.start = memory, mask, start
        self.max_len = None

    def prefill(self, idx, lengths, total_len=None):
        m = self.model
        packed = pack_padded_sequence(m.wte(idx), lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, state = m.decoder(packed, self.start)
        top = (state[0] if m.kind == "lstm" else state)[-1]  # (B, H) after each row's last token
        return m.output(top[:, None], self.memory, self.mask)[:, 0], (state, self.memory, self.mask)

    def step(self, tokens, state):
        rnn_state, memory, mask = state
        m = self.model
        h, rnn_state = m.decoder(m.wte(tokens)[:, None], rnn_state)
        return m.output(h, memory, mask)[:, 0], (rnn_state, memory, mask)

    def select_state(self, state, index):
        rnn_state, memory, mask = state
        if self.model.kind == "lstm":
            rnn_state = (rnn_state[0][:, index], rnn_state[1][:, index])
        else:
            rnn_state = rnn_state[:, index]
        return rnn_state, memory[index], mask[index]
