"""The run folder: every artifact is written to a temporary name, then renamed into place,
so an interrupted write never leaves a half-written file behind."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from specc.diagnostics import UsageError


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never a mix."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


class RunFolder:
    """`runs/<spec name>/`: spec copy, weights, metrics, plots and the ONNX model."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def prepare(self) -> None:
        """Create the folder and prove it is writable, before any training starts."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / f".write-test{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            raise UsageError(f"cannot write the run folder {self.path}: {err.strerror}") from None

    def file(self, name: str) -> Path:
        return self.path / name

    def write_bytes(self, name: str, data: bytes) -> Path:
        path = self.file(name)
        atomic_write(path, data)
        return path

    def write_text(self, name: str, text: str) -> Path:
        return self.write_bytes(name, text.encode("utf-8"))

    def write_json(self, name: str, value) -> Path:
        return self.write_text(name, json.dumps(value, indent=2, sort_keys=True) + "\n")

    def write_metrics(self, records, metric_names) -> Path:
        """metrics.csv: one row per epoch (stage, epoch, train_loss, valid_loss, metrics, lr, seconds)."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["stage", "epoch", "train_loss", "valid_loss", *metric_names, "lr", "seconds"])
        for r in records:
            writer.writerow([r.stage, r.epoch, f"{r.train_loss:.6g}", f"{r.valid_loss:.6g}",
                             *(f"{r.metrics[m]:.6g}" for m in metric_names), f"{r.lr:.6g}", f"{r.seconds:.3f}"])
        return self.write_text("metrics.csv", buf.getvalue())
