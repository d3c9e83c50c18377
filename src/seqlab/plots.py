"""Plots written as PNG files (matplotlib, Agg backend, atomic writes)."""

from __future__ import annotations

from pathlib import Path

from . import atomic


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path, dpi: int = 110) -> None:
    """Lay out, write atomically as PNG, close."""
    fig.tight_layout()
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)


def _finish_axes(ax, xlabel: str, ylabel: str, title: str) -> None:
    """Labels, title, a light grid and the legend."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()


def loss_curve(rows: list[dict], path: Path, title: str = "", floor: float | None = None) -> None:
    """Train loss (raw and smoothed) and validation loss against step; with `floor`,
    the data's entropy (the best loss any model can reach) as a dashed line; a second panel
    with the success and well-formed rates when the rows have them (train.eval_task)."""
    plt = _plt()
    steps = [int(r["step"]) for r in rows if r.get("train_loss")]
    train = [float(r["train_loss"]) for r in rows if r.get("train_loss")]
    val_steps = [int(r["step"]) for r in rows if r.get("val_loss")]
    val = [float(r["val_loss"]) for r in rows if r.get("val_loss")]
    smooth, acc = [], 0.0
    for k, v in enumerate(train, start=1):
        acc = 0.95 * acc + 0.05 * v
        smooth.append(acc / (1 - 0.95**k))  # bias-corrected: no lag from a zero start
    rated = [r for r in rows if r.get("success_rate") not in (None, "")]
    if rated:
        fig, (ax, ax2) = plt.subplots(2, 1, figsize=(7, 6.5), sharex=True, height_ratios=[3, 2])
        xs = [int(r["step"]) for r in rated]
        for key, color in (("success_rate", "tab:green"), ("wellformed_rate", "tab:gray")):
            ax2.plot(xs, [100 * float(r[key]) for r in rated], "o-", color=color, ms=3,
                     label=key.replace("_rate", "").replace("wellformed", "well-formed"))
        ax2.set_ylim(-2, 102)
        ax2.set_ylabel("% of samples")
        ax2.set_xlabel("step")
        ax2.grid(alpha=0.3)
        ax2.legend()
    else:
        fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, train, color="tab:blue", alpha=0.25, lw=0.8, label="train (per step)")
    ax.plot(steps, smooth, color="tab:blue", lw=1.5, label="train (EMA 0.95)")
    if val:
        ax.plot(val_steps, val, "o-", color="tab:orange", ms=3, label=f"validation (best {min(val):.4f})")
    if floor is not None:
        ax.axhline(floor, color="black", ls="--", lw=1, label=f"entropy floor {floor:.4f}")
        ax.set_ylim(bottom=min([floor] + train) - 0.05, top=max(floor * 1.6, min(val or [floor]) + 0.2))
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    _save(plt, fig, path, dpi=110)


def dashboard(rows: list[dict], columns: list[str], path: Path, title: str = "") -> None:
    """One small panel per metric column against step (post-training runs)."""
    plt = _plt()
    series = []
    for col in columns:
        pts = [(int(r["step"]), float(r[col])) for r in rows if r.get(col) not in (None, "")]
        if pts:
            series.append((col, pts))
    if not series:
        return
    n = len(series)
    ncols = min(4, n)
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 2.4 * nrows), squeeze=False)
    for ax, (col, pts) in zip(axes.flat, series):
        ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1.2)
        ax.set_title(col, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    _save(plt, fig, path, dpi=100)


def confusion_matrix(matrix: list[list[int]], labels: list[str], path: Path, title: str = "") -> None:
    """A confusion matrix (rows: true label, columns: predicted) with the counts written in."""
    plt = _plt()
    n = len(labels)
    fig, ax = plt.subplots(figsize=(2.5 + 0.45 * n, 2 + 0.45 * n))
    im = ax.imshow(matrix, cmap="Blues")
    top = max(max(row) for row in matrix) or 1
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(matrix[i][j]), ha="center", va="center", fontsize=8,
                    color="white" if matrix[i][j] > top / 2 else "black")
    ax.set_xticks(range(n), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    _save(plt, fig, path, dpi=110)


def predictions_vs_truth(pred, truth, path: Path, title: str = "") -> None:
    """Regression: predicted against true values (every target number), with the diagonal."""
    plt = _plt()
    p, t = pred.reshape(-1).tolist(), truth.reshape(-1).tolist()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(t, p, s=6, alpha=0.5)
    lo, hi = min(t + p), max(t + p)
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="prediction = truth")
    _finish_axes(ax, "true", "predicted", title)
    _save(plt, fig, path, dpi=110)


def horizon_curve(errors: dict, path: Path, title: str = "") -> None:
    """MSE against the forecast horizon: predictions fed back (errors accumulate) and, when the
    model predicts several values at once, read directly."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for key, label in (("rollout_mse", "fed back (rollout)"), ("direct_mse", "predicted at once")):
        if key in errors:
            ys = errors[key]
            ax.plot(range(1, len(ys) + 1), ys, "o-", label=label)
    _finish_axes(ax, "steps ahead", "mean squared error", title)
    _save(plt, fig, path, dpi=110)
