"""The API's training stage: a Spec (or its path or text), and a frame in place of its data if given
-> a run folder, and the Run that reads it back (history, metrics, predictions through onnxruntime,
what the embeddings learned, plots). `specc train` calls `ready` and specc.training.run.train_run,
as `train` does."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from specc.api.display import shown
from specc.api.spec import Spec, load
from specc.language.diagnostics import DataError, UsageError


def ready(checked, out: Path, device: str = "auto", force: bool = False, resume: bool = False, sets=()):
    """Every refusal that needs no torch (but --device cuda's), before anything is written: the
    folder holds another run (UsageError) or is in use, the checkpoint to resume is not there, the
    data does not read, the plan does not fit. The data, prepared."""
    from specc.data.prepare import prepare
    from specc.model.plan import make_plan
    from specc.training.run import load_resume, out_of_memory
    from specc.training.runfolder import CHECKPOINT, RunFolder

    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UsageError("--device cuda: torch sees no CUDA device here")
    elif device not in ("auto", "cpu"):
        raise UsageError(f"device {device!r}: expected auto, cpu or cuda")
    folder = RunFolder(out)
    why = folder.busy() or (folder.refusal(force) if not resume else None)
    if why is not None:
        raise UsageError(why)
    if resume and not (Path(out) / CHECKPOINT).is_file():
        load_resume(Path(out), checked, list(sets))  # its error
    with out_of_memory(checked, folder):  # as train_run reads it
        prepared = prepare(checked.data, checked.model.inputs)
    make_plan(checked, prepared)  # what the data rules out, an init run that is not there
    return prepared


def spec_of(spec_or_path, overrides, name) -> Spec:
    """A Spec as given, with further overrides applied after its own; else one loaded."""
    if isinstance(spec_or_path, Spec):
        if not overrides:
            return spec_or_path
        from specc.api.spec import override_list

        source = spec_or_path.path if spec_or_path.path is not None else spec_or_path.text
        return load(source, [*spec_or_path.sets, *override_list(overrides)], name or spec_or_path.name)
    return load(spec_or_path, overrides, name)


def folder_path(value, what: str, default: Path | None = None) -> Path | None:
    """An argument naming a folder (`out`, a run's `path`) as a Path: `default` for None (which a required
    argument has none of), else a str or a path-like; a UsageError naming the argument for anything else."""
    if value is None and default is not None:
        return default
    if isinstance(value, (bytes, bool)) or not isinstance(value, (str, os.PathLike)):
        raise UsageError(f"{what}: expected a folder's path (a str or a pathlib.Path), found {type(value).__name__}")
    return Path(value)


def checked_threads(threads) -> int | None:
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= 4096:
        raise UsageError(f"threads: expected a whole number from 1 to 4,096, found {threads!r}")
    return threads


def train(spec_or_path, data=None, out=None, overrides=None, device: str = "auto", threads: int | None = None,
          quiet: bool = False, force: bool = False, name: str | None = None) -> Run:
    """`specc train` from Python: train a spec (a Spec, a path or spec text) and write its run folder
    (default runs/<spec name>/); `data` (a pandas or polars DataFrame, a pyarrow Table, a dict of
    numpy arrays) in place of the spec's source. SpecError, DataError or UsageError for a mistake;
    the progress shows unless `quiet` (in a notebook: a bar and the epoch table, updated in place)."""
    from specc.api.frames import with_frame
    from specc.api.progress import NotebookProgress, in_notebook
    from specc.training.options import RunOptions
    from specc.training.run import train_run

    spec = spec_of(spec_or_path, overrides, name)
    checked = spec.checked if data is None else with_frame(spec.checked, data)
    threads = checked_threads(threads)
    folder = folder_path(out, "out", Path("runs") / checked.name)
    prepared = ready(checked, folder, device, force, sets=spec.sets)
    notebook = not quiet and in_notebook()
    listeners = [NotebookProgress(checked.train.metrics)] if notebook else []
    options = RunOptions(device, spec.sets, quiet=quiet or notebook, force=force, threads=threads)
    result = train_run(checked, folder, options, listeners=listeners, prepared=prepared)
    return Run(Path(result.folder), spec, checked, prepared, result.history)


def open_run(path) -> Run:
    """A finished run folder of `specc train` or specc.train, to read back."""
    from specc.training.runfolder import inspect_folder

    folder = folder_path(path, "path")
    if not folder.is_dir():
        raise UsageError(f"{folder}: no such run folder")
    found = inspect_folder(folder)
    if found.status != "complete":
        what = "holds no run of specc" if found.status is None else f"holds a run that is {found.status}"
        raise UsageError(f"{folder} {what}: open_run reads a finished run (its model.onnx and metrics.csv)")
    return Run(folder)


@dataclass(frozen=True)
class Run:
    """A finished run: its folder and what it holds; trained in this session, also its spec, data and
    the loop's step-by-step history (for plot_loss and plot_schedule)."""

    folder: Path
    spec: Spec | None = None
    checked: object = field(default=None, repr=False)
    prepared: object = field(default=None, repr=False)
    trained: object = field(default=None, repr=False)  # specc.training.metrics.History

    @property
    def onnx_path(self) -> Path:
        return self.folder / "model.onnx"

    @property
    def record(self) -> dict:
        """run.json: how the run trained, its status and final numbers."""
        return json.loads((self.folder / "run.json").read_text())

    @property
    def history(self):
        """metrics.csv as a pandas DataFrame: one row per epoch (stage, epoch, losses, metrics, lr, seconds)."""
        import pandas as pd

        return pd.read_csv(self.folder / "metrics.csv")

    @property
    def metrics(self) -> dict[str, float]:
        """The last epoch's losses and metrics, as metrics.csv holds them."""
        last = self.history.iloc[-1]
        skip = {"stage", "epoch", "lr", "seconds"}
        return {k: float(v) for k, v in last.items() if k not in skip and v == v}  # v == v: not a missing number

    def predict(self, rows, device: str = "auto", delimiter: str | None = None, arrays: dict | None = None):
        """`specc predict model.onnx ROWS` as a DataFrame (rows: a frame, or a file predict reads), by onnxruntime."""
        import pandas as pd

        from specc.inference.infer import predicted

        with _as_file(rows) as path:
            names, columns, n, notes = predicted(self.onnx_path, path, device, delimiter=delimiter, arrays=arrays)
        frame = pd.DataFrame({name: column for name, column in zip(names, columns)})
        frame.attrs["notes"] = list(notes)  # ids the model never saw, read as unknown
        return frame

    def evaluate(self, rows, split: str = "all", device: str = "auto", delimiter: str | None = None,
                 arrays: dict | None = None) -> dict[str, float]:
        """`specc evaluate model.onnx DATA`: the loss and the spec's metrics on labelled rows (a frame or a file)."""
        from specc.inference.evaluate import evaluate_file

        if split not in ("all", "train", "valid"):
            raise UsageError(f"split {split!r}: expected all, train or valid")
        with _as_file(rows) as path:
            result = evaluate_file(self.onnx_path, path, split, device, delimiter=delimiter, arrays=arrays)
        return {k: v for k, v in result.items() if k not in ("arrays", "notes")}

    def recommend(self, users, device: str = "auto"):
        """`specc recommend model.onnx --user ...` as a DataFrame of (user, rank, item, score), by onnxruntime:
        each user's top k (users: ids, or one id), a rank left without an item left out."""
        import pandas as pd

        from specc.inference.recommend import ranked_rows, recommend, typed_users
        from specc.inference.session import load_session

        given = [users] if isinstance(users, (str, int)) and not isinstance(users, bool) else users
        if isinstance(given, (bytes, dict)) or not hasattr(given, "__iter__") or isinstance(given, pd.DataFrame):
            raise UsageError(f"users: expected a list of user ids, found {type(users).__name__}")
        texts = [str(u) for u in given]
        if not texts:
            raise UsageError("users: expected at least one user id, found none")
        session = load_session(self.onnx_path, device=device)
        items, scores = recommend(session, typed_users(session, texts, "users"))
        return pd.DataFrame(list(ranked_rows(texts, items, scores)), columns=["user", "rank", "item", "score"])

    def inspect(self, column: str | None = None, top: int = 1000, names=None) -> Inspected:
        """`specc inspect`: the biases and principal components of an id column's embeddings, as frames."""
        import pandas as pd

        from specc.inference.inspect import NamesFile, inspection

        if isinstance(top, bool) or not isinstance(top, int) or top < 1:
            raise UsageError(f"top: expected a whole number of at least 1, found {top!r}")
        names = NamesFile(Path(names)) if isinstance(names, (str, Path)) else names
        found = inspection(self.folder, column, names, top)
        biases = pd.DataFrame({found.column: list(found.labels), **found.biases})
        components = pd.DataFrame({found.column: list(found.labels)})
        shares = {}
        for name, pcs in found.components.items():
            if pcs is not None:
                scores, share = pcs
                for c in range(scores.shape[1]):
                    components[f"{name}_pc{c + 1}"] = scores[:, c]
                    shares[f"{name}_pc{c + 1}"] = float(share[c])
        return Inspected(found.column, biases, components, shares)

    def plot_loss(self):
        """The loss figure (loss.png): smoothed training loss per step, validation loss per epoch, the rate."""
        from specc.training.plot import loss_figure

        if self.trained is None:  # a run read back from its folder: the steps' losses are not kept there
            return _picture(self.folder / "loss.png")
        return shown(loss_figure(self.trained, self._plan().steps_per_epoch, f"{self.checked.name}: loss"))

    def plot_schedule(self):
        """The learning rate and momentum of every group at every step (`specc show --stage plan --png`)."""
        from specc.training.optim import simulate_schedules
        from specc.training.plot import schedule_figure

        if self.checked is None:
            raise UsageError(f"{self.folder}: a run read back from its folder has no data to plan with; "
                             "specc.load(spec).plot_schedule() draws a spec's schedule")
        plan = self._plan()
        return shown(schedule_figure(plan, simulate_schedules(self.checked, plan, max_steps=20_000),
                                     f"{self.checked.name}: the plan"))

    def _plan(self):
        from specc.model.plan import make_plan

        return make_plan(self.checked, self.prepared)

    def _repr_html_(self) -> str:
        from specc.api.display import pre_html

        record = self.record
        head = (f"<b>run {record.get('spec', '')}</b>: {record.get('status')} in {record.get('seconds', 0):.1f} s on "
                f"{record.get('device', '?')}; {self.folder}/")
        table = self.history.to_html(index=False, float_format=lambda v: f"{v:.6f}")
        return f'<div class="specc-run">{head}{table}{pre_html(f"model: {self.onnx_path}")}</div>'


@dataclass(frozen=True)
class Inspected:
    """What Run.inspect found of one id column: `biases` (a row per id, a column per bias embedding)
    and `components` (a column per embedding's principal component), ids most frequent first;
    `shares`: each component's share of the variance."""

    column: str
    biases: object
    components: object
    shares: dict

    def _repr_html_(self) -> str:
        return f"<b>{self.column}</b>" + self.biases.head(10).to_html() + self.components.head(10).to_html()


def _picture(path: Path):
    """A PNG the run wrote, as a figure of its own."""
    import matplotlib.image
    from matplotlib.figure import Figure

    image = matplotlib.image.imread(path)
    fig = Figure(figsize=(image.shape[1] / 100, image.shape[0] / 100))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(image)
    ax.axis("off")
    return shown(fig)


class _as_file:
    """A path as given, or a frame written to a Parquet file in a folder of its own that goes when
    done: predict and evaluate read it with the rules they read files by, and an error about that
    file names the frame (frames.frame_name), not the file."""

    def __init__(self, rows):
        self.rows, self.tmp = rows, None

    def __enter__(self) -> Path:
        from specc.api.frames import is_frame, to_arrow

        if not is_frame(self.rows):
            return Path(self.rows)
        import tempfile

        import pyarrow.parquet as pq

        table = to_arrow(self.rows)
        self.tmp = tempfile.TemporaryDirectory(prefix="specc-frame-")
        path = Path(self.tmp.name) / "frame.parquet"
        pq.write_table(table, path)
        return path

    def __exit__(self, kind, err, traceback) -> None:
        if self.tmp is None:
            return
        self.tmp.cleanup()
        if isinstance(err, DataError) and os.path.abspath(str(err.path)).startswith(self.tmp.name + os.sep):
            from specc.api.frames import frame_name

            raise err.named(frame_name(self.rows)) from None
