"""Training's progress in a notebook: the loop's events (specc.training.listeners) -> tqdm's
notebook bar over each epoch's steps and the epoch table, one HTML table updated in place.
Outside a notebook specc.train prints what `specc train` prints (specc.training.listeners.Progress)."""

from __future__ import annotations

import sys

from specc.training.listeners import NOT_AVAILABLE, Listener, duration


def in_notebook() -> bool:
    """Whether this runs in a Jupyter kernel (IPython imported, its shell the kernel's)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


class NotebookProgress(Listener):
    """A tqdm.auto bar per epoch (a widget in Jupyter) and the epoch table below it, redrawn in place."""

    def __init__(self, metrics: tuple[str, ...]):
        self.metrics = metrics
        self.rows: list[list[str]] = []
        self.bar = None
        self.handle = None  # IPython's display handle of the table

    def on_epoch_start(self, stage, epoch, steps, started, ewma, losses) -> None:
        from tqdm.auto import tqdm

        self._close_bar()
        self.bar = tqdm(total=steps, desc=f"epoch {epoch}" + (f" ({stage})" if stage else ""), leave=False,
                        unit="step")

    def on_step(self, s: int) -> None:
        if self.bar is not None:
            self.bar.update(s + 1 - self.bar.n)  # tqdm redraws at most every mininterval

    def on_epoch(self, model, record, history, state) -> None:
        self._close_bar()
        cell = (lambda v: NOT_AVAILABLE if v is None else f"{v:.6f}")
        self.rows.append([record.stage, str(record.epoch), f"{record.train_loss:.6f}", cell(record.valid_loss),
                          *(cell(record.metrics.get(m)) for m in self.metrics), duration(record.seconds)])
        self._show()

    def _show(self) -> None:
        from IPython.display import HTML, display

        from specc.api.display import table_html

        table = HTML(table_html(["stage", "epoch", "train_loss", "valid_loss", *self.metrics, "time"], self.rows))
        if self.handle is None:
            self.handle = display(table, display_id=True)
        else:
            self.handle.update(table)

    def _close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def close(self) -> None:
        self._close_bar()
