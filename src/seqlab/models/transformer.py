"""Decoder-only Transformer with pre-norm residual blocks.

Choices (ModelConfig): LayerNorm or RMSNorm; learned or rotary positions;
GELU MLP or SwiGLU; multi-head attention with optional grouped-query attention
(n_kv_head < n_head); optional weight tying and dropout. Causal attention over a
whole sequence runs in seqlab's native kernel on float32 CPUs (models/native/attention.cpp)
and through torch.nn.functional.scaled_dot_product_attention otherwise.

Incremental decoding keeps a KV cache of shape (B, n_kv_head, max_len, head_dim)
per layer. Prompts of different lengths are left-aligned into the cache with
left padding: every row then writes its next token at the same cache index,
padded keys are masked out, and positions count from each row's first real token.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import native
from .base import SeqModel, token_loss
from .layers import GeluMLP, SwiGLU, apply_rope, linear, linear_residual, make_norm, norm_fn, rope_tables
from .moe import MoE, load_balancing_loss


@dataclass
class KVCache:
    k: list  # per layer (B, Hkv, max_len, D)
    v: list
    pos: int  # next cache index to write (same for every row)
    key_mask: torch.Tensor | None  # (B, max_len) True where a real token sits; None if no padding
    offset: torch.Tensor | None  # (B,) left-pad count: position = cache index - offset
    # Views made once, not per decode step (each view is a dispatched op in the hot loop):
    # keys transposed and values with batch and head merged, (B * Hkv, D, max_len) and
    # (B * Hkv, max_len, D), and baddbmm's ignored input.
    kT_flat: list = field(init=False, repr=False)
    v_flat: list = field(init=False, repr=False)
    zero: torch.Tensor = field(init=False, repr=False)
    # the native (C++) step's weights when it applies (models/native.py), else None
    native: object = field(default=None, repr=False)
    # sliding-window attention: the cache is a ring of `window` slots, cache index i in slot
    # i % window (attention does not care about the order of its keys); 0 = linear
    window: int = 0
    # a decoder with cross-attention (seq2seq): each layer's keys and values of the encoder's
    # output, computed once at prefill, and the mask (B, 1, 1, S) of its real positions
    cross_kv: list | None = None
    memory_mask: torch.Tensor | None = None

    def slot(self, pos: int) -> int:
        return pos % self.window if self.window else pos

    def filled(self, pos: int) -> int:
        """How many slots hold keys once index `pos` is written."""
        return min(pos + 1, self.window) if self.window else pos + 1

    def __post_init__(self):
        self.kT_flat = [t.flatten(0, 1).transpose(1, 2) for t in self.k]
        self.v_flat = [t.flatten(0, 1) for t in self.v]
        self.zero = self.k[0].new_zeros(())


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.n_head = cfg.n_head
        self.n_kv_head = cfg.n_kv_head or cfg.n_head
        self.head_dim = cfg.head_dim or cfg.n_embd // cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, (self.n_head + 2 * self.n_kv_head) * self.head_dim,
                             bias=cfg.bias or cfg.qkv_bias)
        self.proj = nn.Linear(self.n_head * self.head_dim, cfg.n_embd, bias=cfg.bias)
        # QK-norm (Qwen3): each head's query and key RMS-normalised before RoPE
        self.q_norm = make_norm("rmsnorm", self.head_dim, False, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = make_norm("rmsnorm", self.head_dim, False, cfg.norm_eps) if cfg.qk_norm else None
        self.dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def heads(self, x, rope=None):
        """q (B, H, T, D), k and v (B, Hkv, T, D) of x (B, T, C): projected, QK-normed, rotated."""
        B, T, _ = x.shape
        H, Hkv, D = self.n_head, self.n_kv_head, self.head_dim
        q, k, v = self.qkv(x).split([H * D, Hkv * D, Hkv * D], dim=-1)
        q = q.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, Hkv, D).transpose(1, 2)  # (B, Hkv, T, D)
        v = v.view(B, T, Hkv, D).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            cos, sin = rope
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        return q, k, v

    def mix(self, q, k, v, attn_mask=None, is_causal=False, starts=None):
        """Attention of q over k, v, then the output projection: (B, T, C). starts (B, T):
        rows that pack several sequences (EncodedLines.packed_batch), attended within each."""
        B, _, T, _ = q.shape
        dropout_p = self.dropout if self.training else 0.0
        # under CPU bf16 autocast, attention runs in float32 (the output projection casts
        # back): the native kernel, or SDPA in float32, are both faster on a CPU than SDPA's
        # bf16 kernels (a SmolLM2 GRPO chunk: 0.25 against 0.5 s natively; SDPA with a mask
        # at 8 x 9 heads x 99 x 174 x 64, forward + backward: 19 against 35 ms)
        upcast = q.device.type == "cpu" and torch.is_autocast_enabled("cpu")
        native_ok = dropout_p == 0.0 and native.attention_applies(q, upcast=upcast)
        if upcast and not q.dtype == k.dtype == v.dtype == torch.float32:
            q, k, v = q.float(), k.float(), v.float()
        if starts is not None and not native_ok:
            attn_mask, is_causal = native.segment_mask(starts), False
        if (is_causal or starts is not None) and native_ok:
            y = native.causal_attention(q, k, v, starts)  # models/native/attention.cpp says why
        else:
            with torch.autocast("cpu", enabled=False) if upcast else contextlib.nullcontext():
                y = F.scaled_dot_product_attention(
                    q, k, v, attn_mask=attn_mask, is_causal=is_causal, dropout_p=dropout_p,
                    enable_gqa=self.n_kv_head != self.n_head,
                )  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)
        return self.resid_dropout(self.proj(y))

    def forward(self, x, rope=None, cache=None, layer=0, attn_mask=None, starts=None):
        T = x.size(1)
        q, k, v = self.heads(x, rope)
        if starts is not None:  # packed rows or a sliding window: a whole-sequence call
            if cache is not None:  # (a prefill: the keys and values go to the cache as well)
                cache.k[layer][:, :, :T] = k
                cache.v[layer][:, :, :T] = v
            return self.mix(q, k, v, starts=starts)
        is_causal = attn_mask is None and T > 1
        if cache is not None:
            end = cache.pos + T
            cache.k[layer][:, :, cache.pos:end] = k
            cache.v[layer][:, :, cache.pos:end] = v
            k, v = cache.k[layer][:, :, :end], cache.v[layer][:, :, :end]
            # A multi-token call with a cache only happens at prefill (pos == 0),
            # where is_causal's top-left alignment is the right one.
            is_causal = is_causal and cache.pos == 0
        return self.mix(q, k, v, attn_mask, is_causal)


    def decode(self, h, cache, layer, resid, rope=None, key_mask=None):
        """One new token per row with the KV cache: resid + attention(h), h and resid (B, C).

        A hand-written path for the hot loop of sampling: 2-D activations and two
        batched matmuls instead of scaled_dot_product_attention, whose CPU kernel
        costs several times more per call for a single query (measured in
        benchmarks/results.md). Grouped-query attention falls out of the layout:
        the G query heads that share a key/value head form the rows of one matmul.
        Every op counts here (a step is ~90 small ops): views are made once per
        cache, and the residual add rides in the output projection's addmm.
        """
        B = h.size(0)
        H, Hkv, D = self.n_head, self.n_kv_head, self.head_dim
        G = H // Hkv
        q, k, v = linear(self.qkv, h).view(B, H + 2 * Hkv, D).split([H, Hkv, Hkv], dim=1)
        if self.q_norm is not None:
            q, k = norm_fn(self.q_norm, q), norm_fn(self.k_norm, k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        slot, t = cache.slot(cache.pos), cache.filled(cache.pos)
        cache.k[layer][:, :, slot] = k
        cache.v[layer][:, :, slot] = v
        # baddbmm with beta=0 ignores its input and applies the 1/sqrt(D) scale in the same op
        scores = torch.baddbmm(cache.zero, q.reshape(B * Hkv, G, D), cache.kT_flat[layer][:, :, :t],
                               beta=0.0, alpha=D ** -0.5)  # (B*Hkv, G, t)
        if key_mask is not None:
            scores = scores.view(B, H, t).masked_fill(~key_mask[:, None, :t], float("-inf")).view(B * Hkv, G, t)
        y = torch.bmm(scores.softmax(-1), cache.v_flat[layer][:, :t])  # (B*Hkv, G, D)
        return linear_residual(self.proj, y.view(B, H * D), resid)


class CrossAttention(nn.Module):
    """A decoder position's attention over the encoder's output (the memory; seq2seq):
    queries from the decoder, keys and values from the memory, its padding masked. The
    weights are torch.nn.MultiheadAttention's (bias-free) split in two: its in_proj rows
    [0, C) are q, rows [C, 3C) are kv (tested against it)."""

    def __init__(self, cfg):
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.n_embd // cfg.n_head
        C = cfg.n_embd
        self.q = nn.Linear(C, C, bias=cfg.bias)
        self.kv = nn.Linear(C, 2 * C, bias=cfg.bias)
        self.proj = nn.Linear(C, C, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def memory_kv(self, memory):
        """Keys and values (B, H, S, D) of the memory (B, S, C)."""
        B, S, _ = memory.shape
        k, v = self.kv(memory).view(B, S, 2, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        return k, v

    def forward(self, x, k, v, mask):
        """x (B, T, C) over keys and values (B, H, S, D), mask (B, 1, 1, S) -> (B, T, C)."""
        B, T, C = x.shape
        q = self.q(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.resid_dropout(self.proj(y.transpose(1, 2).reshape(B, T, C)))

    def weights(self, x, k, mask):
        """Attention probabilities (B, H, T, S) of x over the memory: cross-attention heatmaps."""
        B, T, _ = x.shape
        q = self.q(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * self.head_dim ** -0.5
        return att.masked_fill(~mask, float("-inf")).softmax(-1)


class Block(nn.Module):
    def __init__(self, cfg, cross: bool = False):
        super().__init__()
        self.norm1 = make_norm(cfg.norm, cfg.n_embd, cfg.bias, cfg.norm_eps)
        self.attn = CausalSelfAttention(cfg)
        # seq2seq decoders: attention over the encoder's output between self-attention and MLP
        self.norm_x = make_norm(cfg.norm, cfg.n_embd, cfg.bias, cfg.norm_eps) if cross else None
        self.cross = CrossAttention(cfg) if cross else None
        self.norm2 = make_norm(cfg.norm, cfg.n_embd, cfg.bias, cfg.norm_eps)
        if cfg.mlp == "swiglu":
            # 8/3 * C keeps the parameter count of a 4 * C GELU MLP
            hidden = cfg.n_hidden or int(math.ceil(8 * cfg.n_embd / 3 / 8) * 8)

            def make_mlp():
                return SwiGLU(cfg.n_embd, hidden, cfg.bias, cfg.dropout)
        else:
            def make_mlp():
                return GeluMLP(cfg.n_embd, cfg.n_hidden or 4 * cfg.n_embd, cfg.bias, cfg.dropout,
                               "tanh" if cfg.gelu == "tanh" else "none")
        experts = getattr(cfg, "moe_experts", 0)
        self.mlp = MoE(make_mlp, cfg.n_embd, experts, cfg.moe_top_k) if experts else make_mlp()

    def forward(self, x, rope=None, cache=None, layer=0, attn_mask=None, starts=None, memory=None):
        x = x + self.attn(self.norm1(x), rope, cache, layer, attn_mask, starts)
        if self.cross is not None:  # memory: (states (B, S, C), mask (B, 1, 1, S)), or the cache's
            k, v = cache.cross_kv[layer] if cache is not None else self.cross.memory_kv(memory[0])
            x = x + self.cross(self.norm_x(x), k, v, cache.memory_mask if cache is not None else memory[1])
        return x + self.mlp(self.norm2(x))

    def decode(self, x, cache, layer, rope=None, key_mask=None):
        x = self.attn.decode(norm_fn(self.norm1, x), cache, layer, x, rope, key_mask)
        if self.cross is not None:
            k, v = cache.cross_kv[layer]
            x = x + self.cross(norm_fn(self.norm_x, x)[:, None], k, v, cache.memory_mask)[:, 0]
        return self.mlp.decode(norm_fn(self.norm2, x), x)


class Transformer(SeqModel):
    supports_packing = True  # forward(..., positions=, starts=) takes packed rows

    def __init__(self, vocab_size: int, cfg, cross: bool = False):
        super().__init__()
        self.cfg = cfg
        self.cross = cross  # a seq2seq decoder: blocks attend to an encoder's output
        self.max_len = cfg.block_size
        self.wte = nn.Embedding(vocab_size, cfg.n_embd)
        # numeric inputs (regression): a linear projection of each step's numbers
        self.win = nn.Linear(cfg.input_dim, cfg.n_embd) if getattr(cfg, "input_dim", 0) else None
        self.bidirectional = getattr(cfg, "bidirectional", False)  # encode(): no causal mask
        self.hidden_size = cfg.n_embd
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd) if cfg.pos == "learned" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, cross) for _ in range(cfg.n_layer))
        self.norm_f = make_norm(cfg.norm, cfg.n_embd, cfg.bias, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.n_embd, vocab_size, bias=False)
        if cfg.tie_weights:
            self.lm_head.weight = self.wte.weight
        self.window = getattr(cfg, "attention_window", 0)
        self.moe_layers = [b.mlp for b in self.blocks if isinstance(b.mlp, MoE)]
        self.moe_aux_coef = getattr(cfg, "moe_aux_coef", 0.0)
        self._moe_seen = None  # load-balancing loss and expert usage since moe_stats() last ran
        if cfg.pos == "rope":
            cos, sin = rope_tables(self.blocks[0].attn.head_dim, cfg.block_size, cfg.rope_base)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self._init_weights(cfg)

    def _init_weights(self, cfg):
        # GPT-2: N(0, 0.02), residual projections scaled by 1/sqrt(2 * n_layer); "torch" keeps
        # PyTorch's defaults (makemore): position embeddings of norm ~sqrt(C) instead of ~0.02
        # sqrt(C) make absolute positions easy to tell apart from the first step
        if getattr(cfg, "init", "gpt2") == "torch":
            return
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * cfg.n_layer) if name.endswith("proj.weight") else 0.02
                nn.init.normal_(p, mean=0.0, std=std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def _embed(self, idx, positions):
        x = self.win(idx) if idx.is_floating_point() else self.wte(idx)
        rope = None
        if self.wpe is not None:
            x = x + self.wpe(positions)
        else:
            cos, sin = self.rope_cos[positions], self.rope_sin[positions]  # (..., T, D/2)
            if cos.dim() == 3:  # per-row positions (B, T, D/2) -> (B, 1, T, D/2)
                cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
            rope = (cos, sin)
        return self.drop(x), rope

    def _run(self, x, rope, cache=None, attn_mask=None, starts=None, memory=None, where=None):
        for i, block in enumerate(self.blocks):
            x = block(x, rope, cache, i, attn_mask, starts, memory)
        if where is not None:  # the output layer at the positions asked for only: (N, C)
            x = x[where]
        return self.lm_head(self.norm_f(x))

    def logits_given(self, idx, memory, memory_mask):
        """A decoder's logits (B, T, V) for idx (B, T) attending to an encoder's output
        memory (B, S, C) with its real positions memory_mask (B, 1, 1, S): teacher forcing."""
        B, T = idx.shape
        x, rope = self._embed(idx, torch.arange(T, device=idx.device))
        return self._run(x, rope, starts=self.window_starts(B, T, idx.device), memory=(memory, memory_mask))

    def packed_width(self, longest: int) -> int:
        """The row width for packed batches whose longest sequence has `longest` tokens: two
        such sequences where the native attention takes rows that wide (rows fill better:
        on 50-200-character lines, 8% padding instead of 13%; unpacked: 36%), else one."""
        return 2 * longest if 2 * longest * self.blocks[0].attn.head_dim <= native.ATTENTION_MAX_TD else longest

    def forward(self, idx, targets=None, loss_reduction: str = "mean", positions=None, starts=None):
        """The model contract's forward; with positions and starts (B, T), rows that pack
        several sequences (EncodedLines.packed_batch): each token at its own sequence's
        position, attending within its sequence only."""
        if starts is None:
            logits = self.logits(idx)
        else:
            x, rope = self._embed(idx, positions)
            logits = self._run(x, rope, starts=self.window_starts(*idx.shape, idx.device, starts))
        if targets is None:
            return logits, None
        loss = token_loss(logits, targets, loss_reduction)
        if self.moe_layers:
            loss = self._load_balancing(loss, targets, loss_reduction)
        return logits, loss

    def _load_balancing(self, loss, targets, loss_reduction):
        """The training loss plus moe_aux_coef times the mean over layers of the
        load-balancing loss on real tokens (models/moe.py); counts kept for moe_stats().
        Per-token losses ("none": post-training's log-probs) are left as they are."""
        real = (targets != -1).reshape(-1)
        aux = self.routing_aux(real)
        if not self.training or not self.moe_aux_coef or loss_reduction == "none":
            return loss
        scale = 1.0 if loss_reduction == "mean" else real.sum()
        return loss + self.moe_aux_coef * aux * scale

    def routing_aux(self, real: torch.Tensor) -> torch.Tensor:
        """The mean over MoE layers of the load-balancing loss of the last forward's routing,
        over the tokens where `real` (flat, N) is True; counted for moe_stats()."""
        parts = [load_balancing_loss(probs[real], chosen[real]) for probs, chosen in
                 (m.routing for m in self.moe_layers)]
        aux = torch.stack([a for a, _ in parts]).mean()
        counts = torch.stack([c for _, c in parts]).detach()
        seen = self._moe_seen or {"aux": 0.0, "calls": 0, "counts": torch.zeros_like(counts)}
        seen["aux"] += aux.detach()
        seen["calls"] += 1
        seen["counts"] += counts
        self._moe_seen = seen
        return aux

    def moe_stats(self) -> dict:
        """Since the last call: the mean load-balancing loss ("moe_aux", 1.0 = uniform
        routing) and each layer's share of assignments per expert ("expert_usage":
        "0.26 0.24 ..." per layer, layers separated by " / "). Empty without experts."""
        seen, self._moe_seen = self._moe_seen, None
        if not seen:
            return {}
        usage = seen["counts"] / seen["counts"].sum(-1, keepdim=True).clamp(min=1)
        return {"moe_aux": round(float(seen["aux"]) / seen["calls"], 6),
                "expert_usage": " / ".join(" ".join(f"{u:.3f}" for u in layer.tolist()) for layer in usage)}

    def encode(self, x, lengths):
        """Hidden states (B, T, C) after the final norm, for classification and regression
        heads: x (B, T) token ids or (B, T, input_dim) numbers, row b real up to lengths[b]
        (right padding). Causal: a real position never sees the padding after it.
        Bidirectional: every position sees every real position (the padding is masked)."""
        B, T = x.shape[:2]
        h, rope = self._embed(x, torch.arange(T, device=x.device))
        if self.bidirectional:
            real = torch.arange(T, device=x.device)[None, :] < lengths[:, None]
            mask = real[:, None, None, :]  # (B, 1, 1, T): keys
            for i, block in enumerate(self.blocks):
                h = block(h, rope, None, i, mask)
        else:
            starts = self.window_starts(B, T, x.device)
            for i, block in enumerate(self.blocks):
                h = block(h, rope, None, i, None, starts)
        return self.norm_f(h)

    def window_starts(self, B: int, T: int, device, starts=None):
        """Each query's first visible key (B, T) int32 under the sliding window (combined
        with packed rows' starts), or `starts` as given when there is no window."""
        if not self.window:
            return starts
        first = (torch.arange(T, device=device, dtype=torch.int32) - (self.window - 1)).clamp(min=0)
        return first.expand(B, T).contiguous() if starts is None else torch.maximum(starts, first)

    def window_band(self, T: int, device) -> torch.Tensor | None:
        """(T, T) True where key j is within query i's window (j > i - window), or None."""
        if not self.window:
            return None
        i = torch.arange(T, device=device)
        return i[None, :] > i[:, None] - self.window

    def logits(self, idx):
        return self._logits(idx)

    def logits_at(self, idx, where):
        """SeqModel.logits_at with the output layer run on the N positions asked for only: an
        SFT or DPO loss needs a chat's completion tokens, about half of them, and a pretrained
        model's output layer is its widest (SmolLM2: 49,152 logits a token)."""
        return self._logits(idx, where)

    def _logits(self, idx, where=None):
        B, T = idx.shape
        if T > self.max_len:
            raise ValueError(f"sequence of length {T} exceeds block_size {self.max_len}")
        x, rope = self._embed(idx, torch.arange(T, device=idx.device))
        return self._run(x, rope, starts=self.window_starts(B, T, idx.device), where=where)

    def continuation_logits(self, prefix, prefix_len, rows, suffix):
        """Logits for `suffix` tokens that continue shared prefixes, each prefix run once.

        prefix (P, Tp): token ids, right-padded to prefix_len (P,); rows (B,): the prefix row
        each sequence continues; suffix (B, S): its next tokens (right-padded). Returns
        (B, S, V): logits[b, t] predicts suffix[b, t] from prefix + suffix[b, :t], the same
        as the full forward over the concatenation (tested), with the prefix's forward and
        backward done once per prefix instead of once per row. For RL on groups of
        completions of one prompt (GRPO's G samples), where the prompt is most of the tokens.
        """
        P, Tp = prefix.shape
        B, S = suffix.shape
        device = prefix.device
        plen = prefix_len[rows]  # (B,)
        if Tp + S - 1 > self.max_len:
            raise ValueError(f"sequence of length {Tp + S - 1} exceeds block_size {self.max_len}")
        xp, rope_p = self._embed(prefix, torch.arange(Tp, device=device))
        # suffix token t sits at position plen + t; the last suffix token predicts nothing
        xs, rope_s = self._embed(suffix[:, :-1], plen[:, None] + torch.arange(S - 1, device=device))
        # a suffix query sees its own prefix's real tokens, then the suffix causally
        j = torch.arange(Tp, device=device)
        sees_prefix = (j < plen[:, None])[:, None, :].expand(B, S - 1, Tp)
        causal = torch.ones(S - 1, S - 1, dtype=torch.bool, device=device).tril().expand(B, S - 1, S - 1)
        if self.window:  # suffix token t (position plen + t) sees positions after plen + t - window
            t = torch.arange(S - 1, device=device)
            sees_prefix = sees_prefix & (j[None, None, :] > (plen[:, None] + t[None, :])[:, :, None] - self.window)
            causal = causal & self.window_band(S - 1, device)
        mask = torch.cat([sees_prefix, causal], -1).unsqueeze(1)  # (B, 1, S - 1, Tp + S - 1)
        prefix_starts = self.window_starts(P, Tp, device)
        for block in self.blocks:
            a = block.attn
            qp, kp, vp = a.heads(block.norm1(xp), rope_p)
            xp = xp + a.mix(qp, kp, vp, is_causal=Tp > 1, starts=prefix_starts)
            xp = xp + block.mlp(block.norm2(xp))
            if S > 1:
                qs, ks, vs = a.heads(block.norm1(xs), rope_s)
                k, v = torch.cat([kp[rows], ks], 2), torch.cat([vp[rows], vs], 2)
                xs = xs + a.mix(qs, k, v, attn_mask=mask)
                xs = xs + block.mlp(block.norm2(xs))
        last = xp[torch.arange(P, device=device), prefix_len - 1]  # (P, C): predicts suffix token 0
        first = self.lm_head(self.norm_f(last))[rows].unsqueeze(1)
        if S == 1:
            return first
        return torch.cat([first, self.lm_head(self.norm_f(xs))], 1)

    def attention_maps(self, idx):
        """Attention probabilities per layer: list of (B, H, T, T). For heatmaps."""
        maps = []
        B, T = idx.shape
        x, rope = self._embed(idx, torch.arange(T, device=idx.device))
        causal = torch.ones(T, T, dtype=torch.bool, device=idx.device).tril()
        if self.window:
            causal = causal & self.window_band(T, idx.device)
        starts = self.window_starts(B, T, idx.device)
        for block in self.blocks:
            a = block.attn
            h = block.norm1(x)
            q, k, _ = a.qkv(h).split([a.n_head * a.head_dim, a.n_kv_head * a.head_dim, a.n_kv_head * a.head_dim], -1)
            q = q.view(B, T, a.n_head, a.head_dim).transpose(1, 2)
            k = k.view(B, T, a.n_kv_head, a.head_dim).transpose(1, 2)
            if a.q_norm is not None:
                q, k = a.q_norm(q), a.k_norm(k)
            if rope is not None:
                q, k = apply_rope(q, *rope), apply_rope(k, *rope)
            k = k.repeat_interleave(a.n_head // a.n_kv_head, dim=1)
            att = (q @ k.transpose(-2, -1)) / math.sqrt(a.head_dim)
            maps.append(att.masked_fill(~causal, float("-inf")).softmax(-1))
            x = block(x, rope, starts=starts)
        return maps

    def _new_cache(self, B, device, dtype, length):
        a = self.blocks[0].attn
        shape = (B, a.n_kv_head, length, a.head_dim)
        n = len(self.blocks)
        return KVCache(
            k=[torch.empty(shape, device=device, dtype=dtype) for _ in range(n)],
            v=[torch.empty(shape, device=device, dtype=dtype) for _ in range(n)],
            pos=0, key_mask=None, offset=None,
        )

    def prefill(self, idx, lengths, total_len=None, memory=None):
        """memory: (encoder states (B, S, C), mask (B, 1, 1, S)) for a seq2seq decoder."""
        B, T = idx.shape
        if T > self.max_len:
            raise ValueError(f"prompt of length {T} exceeds block_size {self.max_len}")
        device = idx.device
        length = self.max_len if total_len is None else max(T, min(total_len, self.max_len))
        ar = torch.arange(T, device=device)
        key_mask = offset = None
        if bool((lengths == T).all()):
            positions, mask = ar, None
        else:
            # right-padded -> left-padded: row b's tokens move right by offset[b]
            offset = T - lengths  # (B,)
            src = (ar.view(1, T) - offset.view(B, 1)).clamp(min=0)
            idx = idx.gather(1, src)
            positions = src  # 0 on padding, which is masked anyway
            real = ar.view(1, T) >= offset.view(B, 1)  # (B, T)
            key_mask = torch.ones(B, length, dtype=torch.bool, device=device)
            key_mask[:, :T] = real
            causal = torch.ones(T, T, dtype=torch.bool, device=device).tril()
            eye = torch.eye(T, dtype=torch.bool, device=device)
            # pad queries attend to themselves only, so no row is fully masked (no NaN)
            mask = (causal & real.view(B, 1, T)) | eye
            mask = mask.unsqueeze(1)  # (B, 1, T, T)
        x, rope = self._embed(idx, positions)
        if self.window and length > self.window:  # a ring of `window` slots (KVCache.window)
            return self._prefill_ring(x, rope, mask, key_mask, offset)
        cache = self._new_cache(B, device, self.wte.weight.dtype, length)
        cache.key_mask, cache.offset = key_mask, offset
        if memory is not None:
            cache.cross_kv = [b.cross.memory_kv(memory[0]) for b in self.blocks]
            cache.memory_mask = memory[1]
        starts = self.window_starts(B, T, device) if mask is None else None
        logits = self._run(x, rope, cache, mask, starts)
        cache.pos = T
        if not torch.is_grad_enabled() and not self.cross:  # decode.cpp has no cross-attention
            cache.native = native.pack(self, rows=B)
        return logits[:, -1], cache

    def _prefill_ring(self, x, rope, mask, key_mask, offset):
        """Prefill for sliding-window attention: the prompt's forward with the window's mask
        into a cache of its own length, then its last `window` keys and values into a ring
        cache of `window` slots, which is all that decoding will read: the sampling memory
        stops growing with the length."""
        B, T, _ = x.shape
        W, device = self.window, x.device
        full = self._new_cache(B, device, self.wte.weight.dtype, T)
        if mask is None:
            logits = self._run(x, rope, full, starts=self.window_starts(B, T, device))
        else:
            logits = self._run(x, rope, full, mask & self.window_band(T, device))
        ring = self._new_cache(B, device, self.wte.weight.dtype, W)
        ring.window = W
        kept = torch.arange(max(0, T - W), T, device=device)  # cache index i goes to slot i % W
        for layer in range(len(self.blocks)):
            ring.k[layer][:, :, kept % W] = full.k[layer][:, :, kept]
            ring.v[layer][:, :, kept % W] = full.v[layer][:, :, kept]
        if key_mask is not None:  # slots not written yet are written before they are read
            ring.key_mask = torch.ones(B, W, dtype=torch.bool, device=device)
            ring.key_mask[:, kept % W] = key_mask[:, kept]
            ring.offset = offset
        ring.pos = T
        if not torch.is_grad_enabled():
            ring.native = native.pack(self, rows=B)  # decode.cpp reads and writes the ring too
        return logits[:, -1], ring

    def step(self, tokens, cache):
        if cache.pos >= (self.max_len if cache.window else cache.k[0].size(2)):
            raise ValueError(f"KV cache full: {cache.pos} positions used")
        pos = cache.pos
        if cache.window and cache.key_mask is not None:
            cache.key_mask[:, cache.slot(pos)] = True  # the slot's old key may have been padding
        if cache.native is not None and not torch.is_grad_enabled():
            logits = native.step(cache.native, tokens, cache)
            cache.pos = pos + 1
            return logits, cache
        x = self.wte.weight[tokens]  # (B, C): decoding keeps activations 2-D
        positions = pos if cache.offset is None else pos - cache.offset  # int, or (B,) per row
        rope = None
        if self.wpe is not None:
            x = x + self.wpe.weight[positions]
        else:
            cos, sin = self.rope_cos[positions], self.rope_sin[positions]  # (D/2,) or (B, D/2)
            rope = (cos.unsqueeze(-2), sin.unsqueeze(-2))  # broadcast over heads
        for i, block in enumerate(self.blocks):
            x = block.decode(x, cache, i, rope, cache.key_mask)
        cache.pos = pos + 1
        return linear(self.lm_head, norm_fn(self.norm_f, x)), cache

    def select_state(self, cache, index):
        return KVCache(
            k=[t[index] for t in cache.k], v=[t[index] for t in cache.v], pos=cache.pos,
            key_mask=None if cache.key_mask is None else cache.key_mask[index],
            offset=None if cache.offset is None else cache.offset[index], native=cache.native,
            window=cache.window,
            cross_kv=None if cache.cross_kv is None else [(k[index], v[index]) for k, v in cache.cross_kv],
            memory_mask=None if cache.memory_mask is None else cache.memory_mask[index],
        )
