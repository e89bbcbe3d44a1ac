"""Who watches a run: the training loop's events (its start, lr-find's rate, each epoch and step, a
stop) -> the progress table here, and the run folder's files (specc.training.run.RunFiles) and
the trackers (specc.training.tracking.Trackers), all through one protocol, `Listener`. No torch."""

from __future__ import annotations

import shutil
import sys
import time
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from specc.training.metrics import EpochRecord


class Listener:
    """What a run tells whoever watches it. Every hook does nothing here: a listener overrides the
    ones it needs. specc.training.loop.train calls, in this order:

    on_start(model)                    a fresh run's initial weights, before its first step (not on resume)
    on_lr_found(stage, lr, result)     `lr = find` picked the stage's rate (a lrfind.LRFindResult)
    on_epoch_start(stage, epoch, steps, started, ewma, losses)
                                       an epoch of `steps` steps begins: its clock started at
                                       `started` (time.perf_counter; earlier for a resumed epoch),
                                       the smoothed loss's state before it is `ewma`, and
                                       `losses(a, b)` reads the raw losses of its steps a..b-1
    on_step(s)                         the epoch's step s is taken (keep it cheap: every step calls it)
    on_epoch(model, record, history, state)
                                       an epoch is over: its EpochRecord, the run's History and
                                       the TrainState to go on from
    on_stop(state)                     stopped on request before a step: the TrainState to go on from

    and specc.training.run.train_run, once the model is written, on_finish(history); then close(),
    however the run ended (`with contextlib.closing(listener)`)."""

    def on_start(self, model) -> None:
        """A fresh run's initial weights, before its first step."""

    def on_lr_found(self, stage: str, lr: float, result) -> None:
        """lr-find picked `lr` for `stage` (`result`: the sweep and its suggestions)."""

    def on_epoch_start(self, stage: str, epoch: int, steps: int, started: float, ewma: tuple,
                       losses: Callable) -> None:
        """An epoch begins (see the class docstring)."""

    def on_step(self, s: int) -> None:
        """The epoch's step `s` is taken."""

    def on_epoch(self, model, record: EpochRecord, history, state) -> None:
        """An epoch is over; `state` goes on from the next one."""

    def on_stop(self, state) -> None:
        """Training stopped on request; `state` goes on from where it stopped."""

    def on_finish(self, history) -> None:
        """The run is complete: its model is written."""

    def close(self) -> None:
        """The run is over, however it ended."""


def _overrides(listener: Listener, hook: str) -> bool:
    return getattr(type(listener), hook) is not getattr(Listener, hook)


class Listeners(Listener):
    """Several listeners told the same things, in their order; closed together (each one, even
    when another's close fails)."""

    def __init__(self, listeners):
        self.listeners = list(listeners)
        # a step is too short to call, for nothing, the listeners that do not watch steps
        self.stepping = [l for l in self.listeners if _overrides(l, "on_step")]

    def on_start(self, model) -> None:
        for listener in self.listeners:
            listener.on_start(model)

    def on_lr_found(self, stage: str, lr: float, result) -> None:
        for listener in self.listeners:
            listener.on_lr_found(stage, lr, result)

    def on_epoch_start(self, stage, epoch, steps, started, ewma, losses) -> None:
        for listener in self.listeners:
            listener.on_epoch_start(stage, epoch, steps, started, ewma, losses)

    def on_step(self, s: int) -> None:
        for listener in self.stepping:
            listener.on_step(s)

    def on_epoch(self, model, record, history, state) -> None:
        for listener in self.listeners:
            listener.on_epoch(model, record, history, state)

    def on_stop(self, state) -> None:
        for listener in self.listeners:
            listener.on_stop(state)

    def on_finish(self, history) -> None:
        for listener in self.listeners:
            listener.on_finish(history)

    def close(self) -> None:
        """Each listener's close, in order, whatever the others do; the first failure is raised after."""
        failed = None
        for listener in self.listeners:
            try:
                listener.close()
            except BaseException as err:  # the others still close (a tracker's file, the next one's run)
                failed = failed or err
        if failed is not None:
            raise failed


class AfterEpoch(Listener):
    """A function of each epoch's record, as a listener (specc tune prunes a trial from it): told
    after the listeners before it, so after the run folder has the epoch's files."""

    def __init__(self, fn: Callable[[EpochRecord], None]):
        self.fn = fn

    def on_epoch(self, model, record, history, state) -> None:
        self.fn(record)


def duration(seconds: float) -> str:
    """A time for people: `12.3 s`, `4 min 05 s`, `1 h 02 min`."""
    if seconds < 59.95:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


NOT_AVAILABLE = "#na#"  # a validation number of a run without validation rows (valid = none), as fastai shows it


def _cell(value: float | None) -> str:
    """A validation number as the table shows it; NOT_AVAILABLE where there is none."""
    return f"{NOT_AVAILABLE:<10}" if value is None else f"{value:<10.6f}"


class _LiveEpoch:
    """The epoch the live line shows: where it is, and the smoothed loss folded so far."""

    def __init__(self, stage: str, epoch: int, total: int, started: float, ewma: tuple, losses: Callable):
        self.stage, self.epoch, self.total, self.started, self.ewma, self.losses = (
            stage, epoch, total, started, ewma, losses)
        self.shown = 0  # steps folded into the smoothed loss so far


class Progress(Listener):
    """The per-epoch table, and on a terminal a line within a long epoch that is rewritten in
    place (step, elapsed, eta, smoothed loss); nothing but the table when the output is a file or
    a pipe, so that logs stay clean. It also says which rate lr-find found."""

    LIVE_AFTER = 2.0  # seconds into an epoch before the line appears: a short epoch shows just its row
    LIVE_EVERY = 0.25  # seconds between two updates at least

    def __init__(self, metrics: tuple[str, ...], out=None, live: bool | None = None, stages: bool = False):
        self.out = out or sys.stdout
        self.metrics = metrics
        self.live = self.out.isatty() if live is None else live
        self.header_done = False
        self.stages = stages  # a column for the stage when the plan has several
        self.columns = ["stage"] * stages + ["epoch", "train_loss", "valid_loss", *metrics, "time"]
        self._next = self.LIVE_AFTER  # seconds into the epoch of the next update
        self._shown = 0  # length of the live line on the screen, 0 when there is none
        self._epoch: _LiveEpoch | None = None  # the epoch the live line follows

    def header(self) -> None:
        print("  ".join(f"{c:<10}" for c in self.columns).rstrip(), file=self.out, flush=True)
        self.header_done = True

    def start_epoch(self) -> None:
        """A new epoch: the live line waits LIVE_AFTER seconds again."""
        self._next = self.LIVE_AFTER

    def due(self, elapsed: float) -> bool:
        """Whether the live line wants an update, `elapsed` seconds into the epoch."""
        return self.live and elapsed >= self._next

    def step(self, stage: str, epoch: int, done: int, total: int, smoothed: float, elapsed: float) -> None:
        """Rewrite the live line: `done` of `total` steps taken in `elapsed` seconds."""
        self._next = elapsed + self.LIVE_EVERY
        eta = elapsed / done * (total - done) if done else 0.0
        where = f"stage {stage}  epoch {epoch}" if self.stages else f"epoch {epoch}"
        line = f"{where}  step {done}/{total}  {duration(elapsed)} elapsed  eta {duration(eta)}  loss {smoothed:.6f}"
        line = line[:shutil.get_terminal_size().columns - 1]  # a line that wrapped could not be rewritten
        self.out.write("\r" + line.ljust(self._shown))  # the padding covers a longer line before it
        self.out.flush()
        self._shown = len(line)

    def epoch(self, record: EpochRecord) -> None:
        """The epoch's row of the table (the header first), in the live line's place."""
        if self._shown:  # the table's row takes the live line's place
            self.out.write("\r" + " " * self._shown + "\r")
            self._shown = 0
        if not self.header_done:
            self.header()
        mins, secs = divmod(int(round(record.seconds)), 60)
        cells = [f"{record.stage:<10}"] * self.stages + [
                 f"{record.epoch:<10}", f"{record.train_loss:<10.6f}", _cell(record.valid_loss),
                 *(_cell(record.metrics.get(m)) for m in self.metrics), f"{mins:02d}:{secs:02d}"]
        print("  ".join(cells), file=self.out, flush=True)

    # -- as a Listener

    def on_lr_found(self, stage: str, lr: float, result) -> None:
        print(f"specc: stage {stage}: lr-find suggests {lr:.3g} (valley; {result.describe(('valley',))})",
              file=self.out)
        if result.flat:
            from specc.training.lrfind import FLAT_NOTE

            print(f"specc: note: {FLAT_NOTE}", file=self.out)

    def on_epoch_start(self, stage, epoch, steps, started, ewma, losses) -> None:
        self.start_epoch()
        self._epoch = _LiveEpoch(stage, epoch, steps, started, ewma, losses) if self.live else None

    def on_step(self, s: int) -> None:
        """After step `s`: rewrite the live line when it is due, the epoch's losses folded into the
        smoothed loss as far as it shows them."""
        live = self._epoch
        if live is None or not self.due(time.perf_counter() - live.started):
            return
        from specc.training.metrics import fold

        smoothed, live.ewma = fold(live.losses(live.shown, s + 1), live.ewma)
        live.shown = s + 1
        self.step(live.stage, live.epoch, s + 1, live.total, smoothed, time.perf_counter() - live.started)

    def on_epoch(self, model, record, history, state) -> None:
        self._epoch = None
        self.epoch(record)
