"""Metrics: rows appended to RUN/metrics.csv (flushed per row), TensorBoard if installed."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from . import atomic


class MetricsLog:
    def __init__(self, path: Path | None, columns: list[str], keep_until_step: int | None = None,
                 tensorboard: bool = True):
        """Open `path` for appending. When resuming, rows after `keep_until_step`
        (written after the checkpoint we resume from) are dropped first, so the
        log of a resumed run equals the log of an uninterrupted one. `path` None: log
        nothing (a data-parallel rank other than 0)."""
        self.file = self.tb = None
        if path is None:
            return
        self.path = Path(path)
        self.columns = columns
        if keep_until_step is not None and self.path.exists():
            kept, last = [], 0
            with self.path.open(encoding="utf-8") as f:
                for r in csv.DictReader(f):
                    # a row cut short by a kill has missing fields: drop it and what follows
                    if r.get(columns[-1]) is None or not r["step"].isdigit() or int(r["step"]) <= last:
                        break
                    last = int(r["step"])
                    if last <= keep_until_step:
                        kept.append(r)
            buf = io.StringIO()
            w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
            w.writeheader()
            w.writerows(kept)
            atomic.write_text(self.path, buf.getvalue())
        new = not self.path.exists()
        self.file = self.path.open("a", encoding="utf-8", newline="")
        self.writer = csv.DictWriter(self.file, fieldnames=columns, extrasaction="ignore")
        if new:
            self.writer.writeheader()
            self.file.flush()
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.path.parent / "tensorboard"))
            except Exception:  # tensorboard not installed: CSV only
                self.tb = None

    def log(self, row: dict) -> None:
        if self.file is None:
            return
        self.writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
        self.file.flush()
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, row["step"])

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.tb is not None:
            self.tb.close()


def read_metrics(path: Path) -> list[dict]:
    with Path(path).open(encoding="utf-8") as f:
        return list(csv.DictReader(f))
