"""The `specc train` pipeline: spec file -> checked spec -> data -> training -> run folder."""

from __future__ import annotations

import contextlib
import json
import math
import platform
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from specc.data.splits import validation_rows
from specc.language import overrides as _overrides
from specc.language.check import check
from specc.language import codes
from specc.language.diagnostics import Diagnostic, SpecError, UsageError
from specc.language.parse import parse, read_source
from specc.language.source import Source
from specc.language.spec import Spec
from specc.model import ops
from specc.training.listeners import Listener, Listeners, Progress
from specc.training.options import RunOptions
from specc.training.runfolder import CHECKPOINT, RunFinished, RunFolder

if TYPE_CHECKING:
    from specc.training.world import World


def load_spec(path: str | Path, sets: list[str] = ()) -> tuple[Spec, list[Diagnostic]]:
    """Parse, apply `--set` overrides, check. Raises SpecError, or UsageError for a bad --set."""
    return load_source(read_source(path), sets, Path(path).resolve().parent)


def load_source(source: Source, sets: list[str] = (), base: Path | None = None) -> tuple[Spec, list[Diagnostic]]:
    """load_spec of spec text already read (a file's, or a string's from specc.load): its paths
    are relative to `base` (None: the working folder)."""
    tree = parse(source)
    tree, set_errors = _overrides.apply(tree, list(sets))
    base_dirs = {source.path: base or Path.cwd(), _overrides.OVERRIDE_PATH: Path.cwd()}
    try:
        spec, warnings = check(tree, base_dirs)
    except SpecError as err:
        # The spec's own errors first, then every --set mistake in command-line order.
        own = [d for d in err.diagnostics if d.span is None or d.span.source is source]
        mine = {id(d) for d in own}  # by identity: comparing diagnostics field by field is quadratic
        raise SpecError(own + set_errors + [d for d in err.diagnostics if id(d) not in mine]) from None
    if set_errors:
        raise SpecError(set_errors)
    return spec, warnings


def embedding_table(spec: Spec) -> dict[str, dict]:
    """Each lookup table of the spec's model (an op declaring OpDef.lookup: embedding): its
    column, width and the state-dict key of its table."""
    from specc.model.lower import attribute_names

    attributes = attribute_names(n.name for n in spec.model.nodes)
    return {n.name: {"column": n.op.column, "dim": n.op.dim, "weight": f"{attributes[n.name]}.weight"}
            for n in spec.model.nodes if ops.get(n.op.name).lookup}


def checkpoint_metadata(spec: Spec, vocabs, sets, epoch: int) -> dict[str, str]:
    from specc.data.prepare import vocabs_to_json

    return {
        "specc.spec": spec.source.text,
        "specc.spec_name": spec.name,
        "specc.overrides": json.dumps(list(sets)),
        "specc.vocabs": vocabs_to_json(vocabs),
        "specc.embeddings": json.dumps(embedding_table(spec)),
        "specc.epoch": str(epoch),
    }


@dataclass
class RunResult:
    folder: Path
    history: object
    parity: float  # NaN on a rank other than 0, which exports nothing
    seconds: float
    model: object = None  # the trained torch module


LR_FIND = "lr_find.json"


def write_lr_find(folder: RunFolder, result, title: str, prefix: str = "lr_find") -> None:
    """lr_find.csv (lr, raw and smoothed loss per step) and lr_find.png with the suggestions."""
    from specc.training.plot import lr_find_png

    lines = ["lr,loss,smoothed_loss"] + [f"{lr:.6g},{raw:.6g},{sm:.6g}"
                                         for lr, raw, sm in zip(result.lrs, result.raw, result.losses)]
    folder.write_text(f"{prefix}.csv", "\n".join(lines) + "\n")
    folder.write_bytes(f"{prefix}.png", lr_find_png(result, title))


def load_resume(run: Path, spec: Spec, sets: list[str]):
    """The training state a stopped run left in its folder, if it is a run of this same spec."""
    path = Path(run) / CHECKPOINT
    if not path.is_file():  # said before torch is imported (specc.training.checkpoint imports it)
        raise UsageError(f"--resume {run}: there is no {CHECKPOINT} to resume from")
    from specc.training.checkpoint import from_safetensors

    state, meta = from_safetensors(path)
    if meta.get("specc.spec") != spec.source.text or json.loads(meta.get("specc.overrides", "[]")) != list(sets):
        raise UsageError(f"--resume {run}: the run was started from another spec or other --set values; "
                         "resume it with the same ones")
    return state


def read_lr_find(path: Path, plan) -> dict[str, float]:
    """lr_find.json: the rates `lr = find` found before, by stage; DataError when it is not that."""
    from specc.language.diagnostics import DataError

    if not path.exists() and not path.is_symlink():
        return {}
    fix = "delete it, and training finds the rates again"
    try:
        if not path.is_file():
            raise DataError(str(path), f"is not a file; {fix}", code=codes.UNREADABLE_PATH)
        with open(path, "rb") as f:
            found = json.loads(f.read(1 << 20))
    except OSError as err:
        from specc.training.runfolder import os_reason

        raise DataError(str(path), f"cannot be read: {os_reason(err)}", code=codes.UNREADABLE_PATH) from None
    except ValueError as err:  # not UTF-8, not JSON
        raise DataError(str(path), f"is not JSON ({err}); {fix}", code=codes.BAD_RUN_STATE) from None
    stages = [s.name for s in plan.stages]
    if not isinstance(found, dict):
        raise DataError(str(path), f"expected an object mapping stage names to learning rates, found "
                                   f"{type(found).__name__ if found is not None else 'null'}; {fix}",
                        code=codes.BAD_RUN_STATE)
    for stage, lr in found.items():
        if stage not in stages:
            raise DataError(str(path), f"unknown stage '{stage}' (the spec's stages: {', '.join(stages)}); {fix}",
                            code=codes.BAD_RUN_STATE)
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
            raise DataError(str(path), f"stage '{stage}': expected a positive learning rate, found "
                                       f"{json.dumps(lr)}; {fix}", code=codes.BAD_RUN_STATE)
    return {stage: float(lr) for stage, lr in found.items()}


def train_run(spec: Spec, out: Path, options: RunOptions = RunOptions(), listeners=(), prepared=None) -> RunResult:
    """Train a checked spec and write its run folder, as `options` say (specc.training.options.RunOptions).
    Ctrl-C stops after the current step and leaves checkpoint.safetensors; `options.resume` goes
    on from it (same spec, same --set). The folder is locked while the run writes it, and marked
    `running` in run.json until the run is complete; a folder that holds another run or files specc
    did not write is refused (UsageError), unless `options.force` (specc.training.runfolder).
    RunFinished: a resume of a run that has finished. In data-parallel training (`options.world`)
    only rank 0 writes the folder. The progress table, the folder's files and the trackers
    (TensorBoard's event files always, MLflow with `options.mlflow`) listen to the loop, then
    `listeners` (specc.training.listeners.Listener: specc tune prunes a trial from one).
    `prepared`: the spec's data, where the caller has read it already. Nothing is written into the
    folder before the data is read and the plan made, so a data or spec error leaves it as it was."""
    from specc.training.distributed import agree, broadcast_bytes
    from specc.training.loop import Interrupted

    world = options.world
    if not world.writes:
        return _train_beside(spec, out, options)
    started = time.perf_counter()
    folder = RunFolder(out)
    with _starting(world):  # a failure before training stops the other ranks too
        if options.resume and not (Path(out) / CHECKPOINT).is_file():
            load_resume(Path(out), spec, list(options.sets))  # the error, before anything is created
        folder.acquire()
    try:
        with _starting(world), out_of_memory(spec, folder):
            ready = _ready(folder, spec, options, prepared, started)
            replaced = folder.begin(spec.name, spec.source.text, list(options.sets), force=options.force,
                                    resume=options.resume)
        if replaced is not None and not options.quiet:
            print(f"specc: note: {folder.path} held {replaced}; replacing it", file=sys.stderr)
        agree(world, True)
        # the others read nothing from the folder: the checkpoint travels to them from here
        broadcast_bytes(world, folder.file(CHECKPOINT).read_bytes() if world.parallel and options.resume else None)
        try:
            with out_of_memory(spec, folder, ready.prepared):
                return _train_into(folder, ready, spec, options, listeners)
        except (Interrupted, KeyboardInterrupt):
            folder.end("interrupted")
            raise
        except BaseException as err:
            # an error may name how the run ended: specc tune's pruned trial says "pruned"
            folder.end(getattr(err, "run_status", "failed"), f"{type(err).__name__}: {err}".splitlines()[0])
            raise
    finally:
        folder.release()


class RunFiles(Listener):
    """The run folder's side of a run: the initial weights before the first step (a run that
    diverges in its first epoch still leaves a loadable model.safetensors), after each epoch the
    weights, the checkpoint and metrics.csv, the checkpoint of a run that stopped, and the rates
    lr-find found (lr_find.json, so that training this spec into this folder again takes the same
    rate, and each stage's csv and plot)."""

    def __init__(self, folder: RunFolder, spec: Spec, prepared, sets, found: dict):
        self.folder, self.spec, self.vocabs, self.sets, self.found = folder, spec, prepared.vocabs, sets, found

    def _meta(self, epoch: int) -> dict[str, str]:
        return checkpoint_metadata(self.spec, self.vocabs, self.sets, epoch)

    def _weights(self, model, epoch: int) -> None:
        from safetensors.torch import save

        tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        self.folder.write_bytes("model.safetensors", save(tensors, metadata=self._meta(epoch)))

    def _checkpoint(self, state, epoch: int) -> None:
        from specc.training.checkpoint import to_safetensors

        self.folder.write_bytes(CHECKPOINT, to_safetensors(state, self._meta(epoch)))

    def on_start(self, model) -> None:
        self._weights(model, -1)  # epoch -1: the initial weights

    def on_lr_found(self, stage: str, lr: float, result) -> None:
        self.found[stage] = lr
        self.folder.write_json(LR_FIND, self.found)
        write_lr_find(self.folder, result, f"{self.spec.name}: stage {stage}", prefix=f"lr_find_{stage}")

    def on_epoch(self, model, record, history, state) -> None:
        self._weights(model, record.epoch)
        self._checkpoint(state, record.epoch)
        self.folder.write_metrics(history.records, self.spec.train.metrics)

    def on_stop(self, state) -> None:
        self._checkpoint(state, state.epoch)


@dataclass
class _Ready:
    """What train_run settles under the lock before it writes anything: the checkpoint a resumed
    run goes on from, the data, the plan, and when the run started."""

    state: object
    prepared: object
    plan: object
    started: float


def _ready(folder: RunFolder, spec: Spec, options: RunOptions, prepared, started: float) -> _Ready:
    """Every check that needs no write, before the folder is marked `running`: the folder is ours
    to write (or the run to resume is this spec's and not finished), the data reads, the plan fits."""
    from specc.data.prepare import prepare
    from specc.model.plan import make_plan

    state = None
    if options.resume:
        state = load_resume(folder.path, spec, list(options.sets))
        if folder.contents().status == "complete":
            raise RunFinished(f"{folder.path} holds a finished run: there is nothing to resume "
                              f"(its model is {folder.file('model.onnx')})")
    else:
        why = folder.refusal(options.force)
        if why is not None:  # before the data is read: a refusal is instant
            raise UsageError(why)
    if prepared is None:
        prepared = prepare(spec.data, spec.model.inputs)
    check_parallel(spec, options.world, prepared.n_train)
    return _Ready(state, prepared, make_plan(spec, prepared), started)


class OutOfMemory(Exception):
    """An allocation failed while training: the one line that says where (specc.model.plan.allocation_report)."""


@contextlib.contextmanager
def out_of_memory(spec: Spec, folder: RunFolder, prepared=None):
    """torch's or numpy's failed allocation (specc.model.memory.allocation_failed) as OutOfMemory, whose
    line names the spec line and what to change, and where the run's last checkpoint is kept."""
    from specc.model.memory import allocation_failed

    try:
        yield
    except (MemoryError, RuntimeError) as err:
        if not allocation_failed(err):
            raise
        from specc.model.plan import allocation_report

        kept = f"; {folder.path}/ keeps its last checkpoint" if folder.file(CHECKPOINT).is_file() else ""
        raise OutOfMemory(allocation_report(spec, prepared, err) + kept) from None


@contextlib.contextmanager
def _starting(world: World):
    """Rank 0's steps before training: where one fails, the other ranks are told (they wait in
    specc.training.distributed.agree) and stop, rather than wait for a run that never starts."""
    try:
        yield
    except BaseException:
        if world.parallel:
            from specc.training.distributed import agree

            with contextlib.suppress(Exception):
                agree(world, False)
        raise


def check_parallel(spec: Spec, world: World, n_train: int | None = None) -> None:
    """UsageError unless every rank can take an equal slice of every batch of `data.batch` rows."""
    if not world.parallel:
        return
    batch = spec.data.batch
    if batch % world.size:
        below, above = batch - batch % world.size, batch + world.size - batch % world.size
        raise UsageError(f"data.batch = {batch} does not divide among {world.size} processes: each takes an equal "
                         f"slice of every batch; choose a multiple of {world.size} (such as "
                         f"{below or above} or {above}) with --set data.batch=N, or another number of processes")
    if n_train is not None and n_train < batch:
        raise UsageError(f"data.batch = {batch} is more than the {n_train} training rows: in data-parallel training "
                         "every batch is whole; choose a smaller batch")


@contextlib.contextmanager
def _stop_on_signals(stop):
    """Ctrl-C or a scheduler's SIGTERM: stop after the step in progress (a second one: now)."""
    import signal

    def on_signal(signum, frame):
        if stop.signalled:
            raise KeyboardInterrupt
        stop.ask()

    if not _main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _train_beside(spec: Spec, out: Path, options: RunOptions) -> RunResult:
    """A rank other than 0: train its slice of every batch beside rank 0, the same loop the same
    way (rank 0's choice, made from the same options), writing nothing and printing nothing but errors."""
    from specc.data.prepare import prepare
    from specc.model.plan import make_plan
    from specc.training.checkpoint import check_fits, from_safetensors
    from specc.training.distributed import PeerFailed, agree, broadcast_bytes, same_run, wait_for_rank_0
    from specc.training.loop import StopRequest, default_threads, torch_threads, train

    world, started = options.world, time.perf_counter()
    if not agree(world, True):
        raise PeerFailed("rank 0 could not start the run (its error says why)")
    data = broadcast_bytes(world, None)
    state = from_safetensors(Path(out) / CHECKPOINT, data)[0] if options.resume and data else None
    prepared = prepare(spec.data, spec.model.inputs)
    same_run(world, spec, options.sets, prepared, resume=options.resume, device_step=options.device_step)
    check_parallel(spec, world, prepared.n_train)
    plan = make_plan(spec, prepared)
    if state is not None:
        check_fits(Path(out) / CHECKPOINT, state, spec, prepared, plan, world.device)
    found = json.loads(broadcast_bytes(world, None) or b"{}")
    stop = StopRequest(shared=True)
    with _stop_on_signals(stop), torch_threads(options.threads or default_threads(spec, prepared)):
        model, history = train(spec, prepared, plan, options, resume=state, stop=stop, found_lrs=found)
    # leaving while rank 0 exports could cost the model (specc.training.distributed.rank_0_writes)
    wait_for_rank_0(world)
    return RunResult(Path(out), history, float("nan"), time.perf_counter() - started, model)


def _train_into(folder: RunFolder, ready: _Ready, spec: Spec, options: RunOptions, listeners) -> RunResult:
    """train_run's work, in a folder it has locked and marked `running`: the loop, its listeners
    (closed however it ends), then the model's files."""
    from specc.training.distributed import rank_0_writes
    from specc.training.loop import StopRequest, torch_threads, train

    options, loop, device = _settled(folder, ready, spec, options)
    found = _found_rates(folder, ready.plan, options.world)
    stop = StopRequest(shared=options.world.parallel)
    with contextlib.closing(_listeners(folder, ready, spec, options, found, listeners)) as listener:
        with _stop_on_signals(stop), torch_threads(options.threads):
            model, history = train(spec, ready.prepared, ready.plan, options, listener, resume=ready.state,
                                   stop=stop, found_lrs=found)
        with rank_0_writes(options.world):  # the other ranks wait for it (distributed.wait_for_rank_0)
            diff, seconds = _finish(folder, spec, model, history, ready, _record(spec, ready, options, device, loop))
        listener.on_finish(history)
    if not options.quiet:
        from specc.training.listeners import duration

        print(f"specc: trained in {duration(seconds)}; wrote {folder.path}/ (model.onnx matches torch to {diff:.2g})",
              file=options.stdout or sys.stdout)
    return RunResult(folder.path, history, diff, seconds, model)


def _settled(folder: RunFolder, ready: _Ready, spec: Spec, options: RunOptions):
    """Before the first step: every rank about to train the same thing, the options with the
    loop's step and the threads decided, the checkpoint checked against the spec, spec.spec
    written and the opening line printed; (options, the loop's name, the device)."""
    from specc.training.checkpoint import check_fits
    from specc.training.distributed import same_run
    from specc.training.loop import default_threads, training_device

    world = options.world
    same_run(world, spec, options.sets, ready.prepared, resume=options.resume, device_step=options.device_step)
    device = training_device(options)
    graph, loop = _loop(spec, device, options)
    options = replace(options, graph=graph, threads=options.threads or default_threads(spec, ready.prepared))
    if ready.state is not None:
        check_fits(folder.file(CHECKPOINT), ready.state, spec, ready.prepared, ready.plan, device)
    folder.write_text("spec.spec", spec.source.text)
    if not options.quiet:
        print(_announcement(spec, ready, device, loop, options.threads, world), file=options.stdout or sys.stdout)
    return options, loop, device


def _found_rates(folder: RunFolder, plan, world: World) -> dict[str, float]:
    """The rates lr-find found before for this folder's stages (lr_find.json): rank 0's, for every rank."""
    from specc.training.distributed import broadcast_bytes

    found = read_lr_find(folder.file(LR_FIND), plan)
    broadcast_bytes(world, json.dumps(found).encode() if world.parallel else None)  # rank 0's rates for all
    return found


def _listeners(folder: RunFolder, ready: _Ready, spec: Spec, options: RunOptions, found: dict,
               extra) -> Listeners:
    """Who listens to the loop, in order: the progress table (unless quiet), the run folder's
    files, the trackers, then the caller's `extra`."""
    progress = [] if options.quiet else [Progress(spec.train.metrics, out=options.stdout or sys.stdout,
                                                  stages=len(ready.plan.stages) > 1)]
    files = RunFiles(folder, spec, ready.prepared, options.sets, found)
    return Listeners([*progress, files, _trackers(folder, spec, ready.plan, options), *extra])


def _record(spec: Spec, ready: _Ready, options: RunOptions, device, loop: str) -> dict:
    """What run.json records of how the run trained, beside its status and final numbers."""
    import torch

    world = options.world
    return {"spec": spec.name, "overrides": list(options.sets), "params": {p.name: p.value for p in spec.params},
            "device": device.type, "loop": loop, "threads": options.threads, "world_size": world.size,
            "backend": world.backend, "torch": torch.__version__, "python": platform.python_version(),
            "train_rows": ready.prepared.n_train, "valid_rows": ready.prepared.n_valid, "epochs": ready.plan.epochs,
            "resumed": options.resume}


def _finish(folder: RunFolder, spec: Spec, model, history, ready: _Ready, record: dict) -> tuple[float, float]:
    """A trained run's last files: loss.png, model.onnx (checked against torch), and run.json
    marked complete; (the ONNX parity figure, the run's seconds)."""
    from specc.training.plot import loss_png

    folder.write_bytes("loss.png", loss_png(history, ready.plan.steps_per_epoch, f"{spec.name}: loss"))
    diff = _write_onnx(folder, spec, model, ready.prepared)
    seconds = time.perf_counter() - ready.started
    folder.write_json("run.json", {
        "status": "complete", "started": folder.record.get("started"), **record, "seconds": round(seconds, 3),
        "onnx_parity_max_abs_diff": diff, "final": history.records[-1].__dict__ if history.records else None,
    })
    return diff, seconds


def _trackers(folder: RunFolder, spec: Spec, plan, options: RunOptions):
    """The run's trackers: TensorBoard's event files in its folder, and MLflow at `options.mlflow` if given."""
    from specc.language.summary import describe
    from specc.training.tracking import MLflow, TensorBoard, Trackers, hparam_values

    hparams = hparam_values({p.name: p.value for p in spec.params}, list(options.sets))
    trackers = [TensorBoard(folder.path, spec.source.text, describe(spec, plan), hparams, options.resume)]
    if options.mlflow:
        trackers.append(MLflow(options.mlflow, spec.name, folder.path, spec.source.text, hparams))
    return Trackers(trackers, plan.steps_per_epoch)


def _loop(spec: Spec, device, options: RunOptions) -> tuple[bool, str]:
    """Whether to take the CUDA-graph step (options.graph None: wherever it applies, with a note on a
    CUDA device where it does not; never by default in data-parallel training, as
    specc.training.steps.loop_kind decides, its captured all-reduce being yet to be measured) and
    the loop's name for run.json."""
    graph, device_step, quiet, parallel = options.graph, options.device_step, options.quiet, options.world.parallel
    if graph is None:
        from specc.training.fastpath import graph_reason

        reason = graph_reason(spec, device)
        graph = reason is None and not device_step and not parallel
        if reason is not None and device.type == "cuda" and not quiet and not parallel:
            print(f"specc: note: training with the plain loop, not the CUDA-graph step: {reason}", file=sys.stderr)
    return graph, "cuda-graph" if graph else "device-step" if device_step else "plain"


def _announcement(spec: Spec, ready: _Ready, device, loop: str, threads: int, world: World) -> str:
    """The line that opens a run: what trains where, on how much data, and where a resumed run goes on."""
    prepared, plan, state = ready.prepared, ready.plan, ready.state
    where = ""
    if state is not None and state.stage >= len(plan.stages):  # stopped after its last epoch
        where = ", resuming after the last epoch: writing the model"
    elif state is not None:
        stage = f" of stage '{plan.stages[state.stage].name}'" if len(plan.stages) > 1 else ""
        where = f", resuming at epoch {state.epoch} step {state.step}{stage}"
    on = f"{world.size} processes ({world.backend}, a slice of {plan.batch // world.size} rows of every batch each)" if (
        world.parallel) else device.type
    return (f"specc: training {spec.name} on {on} ({loop} loop, {threads} thread{'s' * (threads > 1)}): "
            f"{prepared.n_train} training {'users' if spec.data.per_user else 'rows'}, "
            f"{validation_rows(spec.data.valid, prepared.n_valid)}, {plan.steps_per_epoch} steps per epoch{where}")


def _write_onnx(folder: RunFolder, spec: Spec, model, prepared) -> float:
    """Export the trained model to model.onnx, checked against torch on the parity rows first; the
    largest difference. ExportError (and no model.onnx) when the weights hold NaN or infinity."""
    import torch

    from specc.export import ExportError, parity, parity_rows, to_onnx

    if not all(bool(torch.isfinite(p).all()) for p in model.state_dict().values() if p.is_floating_point()):
        raise ExportError("the trained weights hold NaN or infinite values, so no model.onnx was written; "
                          f"the last checkpoint is in {folder.path}/")
    if spec.data.feedback is not None:  # a recommender: user ids in, each user's top k items out
        from specc.export.topk import parity_users, to_onnx_topk, topk_parity
        from specc.training.loop import interactions_of

        inter = interactions_of(spec, prepared, torch.device("cpu"))
        onnx_bytes = to_onnx_topk(spec, model, prepared.vocabs, inter).SerializeToString()
        diff = topk_parity(spec, model, onnx_bytes, prepared.vocabs, inter,
                           parity_users(spec, prepared, prepared.vocabs))
    else:
        onnx_bytes = to_onnx(spec, model, prepared.vocabs, prepared.sides).SerializeToString()
        diff = parity(spec, model, onnx_bytes, prepared.vocabs, parity_rows(spec, prepared), prepared.sides)
    folder.write_bytes("model.onnx", onnx_bytes)
    return diff


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
