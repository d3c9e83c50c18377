"""Attention heatmaps: every layer x head for one input, and the average over a
batch of samples (by position), drawn with matplotlib."""

from __future__ import annotations

from pathlib import Path

import torch

from .. import atomic
from ..errors import SeqlabError
from ..models.transformer import Transformer


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _grid(maps: list[torch.Tensor], labels: list[str], title: str, path: Path,
          key_labels: list[str] | None = None, key_name: str = "key (attended to)") -> None:
    """maps: per layer (H, T, S). One panel per layer x head; rows = queries (labels),
    columns = keys (key_labels; the queries' own by default: self-attention)."""
    plt = _plt()
    key_labels = key_labels or labels
    L, H, T, S = len(maps), maps[0].shape[0], maps[0].shape[-2], maps[0].shape[-1]
    cell = max(2.2, min(0.18 * max(T, S), 6.0))
    fig, axes = plt.subplots(L, H, figsize=(cell * H + 1, cell * L + 0.8), squeeze=False)
    step, key_step = max(1, T // 24), max(1, S // 24)  # keep tick labels readable on long inputs
    ticks, key_ticks = list(range(0, T, step)), list(range(0, S, key_step))
    for layer in range(L):
        for head in range(H):
            ax = axes[layer][head]
            ax.imshow(maps[layer][head].numpy(), cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_title(f"layer {layer} head {head}", fontsize=8)
            ax.set_xticks(key_ticks)
            ax.set_yticks(ticks)
            ax.set_xticklabels([key_labels[i] for i in key_ticks], fontsize=6, rotation=90)
            ax.set_yticklabels([labels[i] for i in ticks], fontsize=6)
            if head == 0:
                ax.set_ylabel("query (predicting after)", fontsize=7)
            if layer == L - 1:
                ax.set_xlabel(key_name, fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


@torch.no_grad()
def cross_heatmap(model, tokenizer, text: str, path: Path) -> dict:
    """A seq2seq run: decode `text` greedily, then draw each decoder layer's cross-attention
    (rows: the decoder's inputs, <bos> + output; columns: the source's tokens)."""
    from ..supervised import translate

    tokenizer.check_encodable(text, "input")
    ids = [tokenizer.bos_id, *tokenizer.encode(text), tokenizer.eos_id]
    if model.max_len is not None and len(ids) > model.max_len:
        raise SeqlabError(f"input has {len(ids)} tokens with <bos> and <eos>; the model's context is {model.max_len}")
    device = next(model.parameters()).device
    src, sl = torch.tensor([ids], device=device), torch.tensor([len(ids)], device=device)
    budget = model.max_len - 1 if model.max_len is not None else 4 * len(ids) + 16  # recurrent: no context limit
    output = translate(model.eval(), src, sl, tokenizer, budget, device=device)[0]
    tgt_in = torch.tensor([[tokenizer.bos_id, *tokenizer.encode(output)]], device=device)
    maps = [m[0].float().cpu() for m in model.cross_attention_maps(src, sl, tgt_in)]
    src_labels = ["<bos>"] + [tokenizer.decode([i]) or "?" for i in ids[1:-1]] + ["<eos>"]
    tgt_labels = ["<bos>"] + [tokenizer.decode([i]) or "?" for i in tgt_in[0, 1:].tolist()]
    _grid(maps, tgt_labels, f"cross-attention: {text!r} -> {output!r}", path, key_labels=src_labels,
          key_name="source token")
    return {"layers": len(maps), "heads": maps[0].shape[0], "tokens": len(ids), "output": output}


@torch.no_grad()
def input_heatmap(model, tokenizer, text: str, path: Path) -> dict:
    if not isinstance(model, Transformer):
        raise SeqlabError("attention heatmaps need a transformer run (this run's model has no attention)")
    tokenizer.check_encodable(text, "input")
    ids = tokenizer.encode_prompt(text)
    if len(ids) > model.max_len:
        raise SeqlabError(f"input has {len(ids)} tokens with <bos>; the model's context is {model.max_len}")
    device = next(model.parameters()).device
    maps = [m[0].float().cpu() for m in model.eval().attention_maps(torch.tensor([ids], device=device))]
    labels = ["<bos>"] + [tokenizer.decode([i]) or "?" for i in ids[1:]]
    _grid(maps, labels, f"attention for input {text!r}", path)
    return {"layers": len(maps), "heads": maps[0].shape[0], "tokens": len(ids)}


@torch.no_grad()
def average_heatmap(model, token_rows: list[list[int]], path: Path, title: str) -> dict:
    """Average attention by position over rows (each starting with <bos>)."""
    T = max(len(r) for r in token_rows)
    idx = torch.zeros(len(token_rows), T, dtype=torch.long)
    valid = torch.zeros(len(token_rows), T, dtype=torch.bool)
    for b, r in enumerate(token_rows):
        idx[b, : len(r)] = torch.tensor(r)
        valid[b, : len(r)] = True
    device = next(model.parameters()).device
    maps = model.eval().attention_maps(idx.to(device))  # causal: padding on the right changes nothing before it
    q = valid[:, None, :, None].float().to(device)  # average each query row over the rows that have it
    avg = [((m.float() * q).sum(0) / q.sum(0).clamp(min=1)).cpu() for m in maps]
    _grid(avg, [str(i) for i in range(T)], title, path)
    return {"rows": len(token_rows), "tokens": T}
