"""Encoder-decoder Transformer (task type seq2seq): translation, reversal, addition, dates.

The encoder is the zoo's Transformer without the causal mask (its `encode`, the source's
padding masked); the decoder is the zoo's causal Transformer whose blocks also attend to the
encoder's output (CrossAttention). Source and target share the tokenizer but not the
embeddings. Training is teacher forcing: the decoder reads <bos> + target and predicts
target + <eos>, cross-entropy over target tokens.

Decoding goes through seqlab's one sampler: `bind(src, src_lengths)` returns the decoder
conditioned on the encoded sources, a SeqModel whose state carries each layer's cross-
attention keys and values (computed once) next to its KV cache, so greedy, temperature,
top-k/p and beam search all work unchanged (select_state reorders the memory with the rows).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn

from .base import SeqModel, token_loss
from .transformer import Transformer


class Seq2Seq(nn.Module):
    def __init__(self, vocab_size: int, cfg):
        super().__init__()
        self.encoder = Transformer(vocab_size, dataclasses.replace(cfg, bidirectional=True, attention_window=0))
        self.encoder.lm_head = None  # the encoder predicts nothing: its states are the memory
        self.decoder = Transformer(vocab_size, dataclasses.replace(cfg, bidirectional=False), cross=True)
        self.max_len = self.decoder.max_len

    def memory(self, src: torch.Tensor, src_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder's states (B, S, C) and the mask of real source positions (B, 1, 1, S)."""
        real = torch.arange(src.size(1), device=src.device)[None, :] < src_lengths[:, None]
        return self.encoder.encode(src, src_lengths), real[:, None, None, :]

    def forward(self, src, src_lengths, tgt_in, targets=None, loss_reduction: str = "mean"):
        """Teacher forcing: logits (B, T, V) for tgt_in (B, T) = <bos> + target given the
        sources; loss over targets (B, T) with -1 ignored."""
        logits = self.decoder.logits_given(tgt_in, *self.memory(src, src_lengths))
        return logits, None if targets is None else token_loss(logits, targets, loss_reduction)

    def cross_attention_maps(self, src, src_lengths, tgt_in) -> list[torch.Tensor]:
        """Each decoder layer's cross-attention probabilities (B, H, T, S) for decoder inputs
        tgt_in (B, T) over the encoded sources: the heatmap's numbers."""
        memory, mask = self.memory(src, src_lengths)
        dec = self.decoder
        x, rope = dec._embed(tgt_in, torch.arange(tgt_in.size(1), device=tgt_in.device))
        maps = []
        for block in dec.blocks:
            x = x + block.attn(block.norm1(x), rope)
            k, v = block.cross.memory_kv(memory)
            h = block.norm_x(x)
            maps.append(block.cross.weights(h, k, mask))
            x = x + block.cross(h, k, v, mask)
            x = x + block.mlp(block.norm2(x))
        return maps

    def bind(self, src: torch.Tensor, src_lengths: torch.Tensor) -> "BoundDecoder":
        return BoundDecoder(self, *self.memory(src, src_lengths))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


class BoundDecoder(SeqModel):
    """The decoder conditioned on encoded sources: row b continues source b (a SeqModel for
    sampling.generate and beam_search)."""

    conditioned = True  # rows with the same prompt still differ: the sampler must not merge them

    def __init__(self, model: Seq2Seq, memory: torch.Tensor, memory_mask: torch.Tensor):
        super().__init__()
        self.model = model
        self.memory, self.memory_mask = memory, memory_mask
        self.max_len = model.max_len

    def prefill(self, idx, lengths, total_len=None):
        if idx.size(0) != self.memory.size(0):
            raise ValueError(f"{idx.size(0)} prompts for {self.memory.size(0)} sources")
        return self.model.decoder.prefill(idx, lengths, total_len, memory=(self.memory, self.memory_mask))

    def step(self, tokens, state):
        return self.model.decoder.step(tokens, state)

    def select_state(self, state, index):
        return self.model.decoder.select_state(state, index)
