"""Pictures of a discovery run: the pool's score histogram per generation (round) and
the best score against wall-clock time."""

from __future__ import annotations

from pathlib import Path


def draw_progress(entries: list[dict], path: Path, title: str, best_known: float | None = None) -> None:
    """entries: per-generation dicts with seconds, best and `scores` (the pool's scores)."""
    from ..atomic import atomic_path
    from ..plots import _plt

    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    with_scores = [e for e in entries if e.get("scores")]
    shown = with_scores if len(with_scores) <= 6 else [with_scores[round(i * (len(with_scores) - 1) / 5)]
                                                         for i in range(6)]
    lo = min((min(e["scores"]) for e in shown), default=0)
    hi = max((max(e["scores"]) for e in shown), default=1)
    bins = [lo - 0.5 + i for i in range(int(hi - lo) + 2)] if hi - lo <= 60 else 30
    for e in shown:
        left.hist(e["scores"], bins=bins, histtype="step", lw=1.5, label=f"gen {e['round']} ({len(e['scores'])})")
    left.set_xlabel("score")
    left.set_ylabel("constructions in the pool")
    left.set_title("pool score histogram per generation")
    if shown:
        left.legend(fontsize=8)
    else:
        left.text(0.5, 0.5, "no per-generation pool scores logged", ha="center", transform=left.transAxes)
    xs = [e["seconds"] for e in entries if e.get("best") is not None]
    ys = [e["best"] for e in entries if e.get("best") is not None]
    right.step(xs, ys, where="post", label="best so far")
    if best_known is not None:
        right.axhline(best_known, color="gray", ls="--", lw=1, label=f"best known {best_known:g}")
    right.set_xlabel("wall-clock seconds")
    right.set_ylabel("best score")
    right.set_title("best score vs time")
    right.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
