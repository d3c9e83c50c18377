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


def _grid(maps: list[torch.Tensor], labels: list[str], title: str, path: Path) -> None:
    """maps: per layer (H, T, T). One panel per layer x head; rows = queries, columns = keys."""
    plt = _plt()
    L, H, T = len(maps), maps[0].shape[0], maps[0].shape[-1]
    cell = max(2.2, min(0.18 * T, 6.0))
    fig, axes = plt.subplots(L, H, figsize=(cell * H + 1, cell * L + 0.8), squeeze=False)
    step = max(1, T // 24)  # keep tick labels readable on long inputs
    ticks = list(range(0, T, step))
    for layer in range(L):
        for head in range(H):
            ax = axes[layer][head]
            ax.imshow(maps[layer][head].numpy(), cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_title(f"layer {layer} head {head}", fontsize=8)
            ax.set_xticks(ticks)
            ax.set_yticks(ticks)
            ax.set_xticklabels([labels[i] for i in ticks], fontsize=6, rotation=90)
            ax.set_yticklabels([labels[i] for i in ticks], fontsize=6)
            if head == 0:
                ax.set_ylabel("query (predicting after)", fontsize=7)
            if layer == L - 1:
                ax.set_xlabel("key (attended to)", fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


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
