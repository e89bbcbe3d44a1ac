"""The `specc train` pipeline: spec file -> checked spec -> data -> training -> run folder."""

from __future__ import annotations

import json
import math
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from specc import overrides as _overrides
from specc.check import check
from specc.diagnostics import Diagnostic, SpecError
from specc.parse import parse, read_source
from specc.runfolder import CHECKPOINT, RunFinished, RunFolder
from specc.spec import Spec


def load_spec(path: str | Path, sets: list[str] = ()) -> tuple[Spec, list[Diagnostic]]:
    """Parse, apply `--set` overrides, check. Raises SpecError, or UsageError for a bad --set."""
    source = read_source(path)
    tree = parse(source)
    tree, set_errors = _overrides.apply(tree, list(sets))
    base_dirs = {source.path: Path(source.path).resolve().parent, _overrides.OVERRIDE_PATH: Path.cwd()}
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
    return {n.name: {"column": n.op.column, "dim": n.op.dim} for n in spec.model.nodes if n.op.name == "embedding"}


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
    parity: float
    seconds: float


LR_FIND = "lr_find.json"


def write_lr_find(folder: RunFolder, result, title: str, prefix: str = "lr_find") -> None:
    """lr_find.csv (lr, raw and smoothed loss per step) and lr_find.png with the suggestions."""
    from specc.plot import lr_find_png

    lines = ["lr,loss,smoothed_loss"] + [f"{lr:.6g},{raw:.6g},{sm:.6g}"
                                         for lr, raw, sm in zip(result.lrs, result.raw, result.losses)]
    folder.write_text(f"{prefix}.csv", "\n".join(lines) + "\n")
    folder.write_bytes(f"{prefix}.png", lr_find_png(result, title))


def load_resume(run: Path, spec: Spec, sets: list[str]):
    """The training state a stopped run left in its folder, if it is a run of this same spec."""
    from specc.checkpoint import from_safetensors
    from specc.diagnostics import UsageError

    path = Path(run) / CHECKPOINT
    if not path.is_file():
        raise UsageError(f"--resume {run}: there is no {CHECKPOINT} to resume from")
    state, meta = from_safetensors(path)
    if meta.get("specc.spec") != spec.source.text or json.loads(meta.get("specc.overrides", "[]")) != list(sets):
        raise UsageError(f"--resume {run}: the run was started from another spec or other --set values; "
                         "resume it with the same ones")
    return state


def read_lr_find(path: Path, plan) -> dict[str, float]:
    """lr_find.json: the rates `lr = find` found before, by stage; DataError when it is not that."""
    from specc.diagnostics import DataError

    if not path.exists() and not path.is_symlink():
        return {}
    fix = "delete it, and training finds the rates again"
    try:
        if not path.is_file():
            raise DataError(str(path), f"is not a file; {fix}", code="D120")
        with open(path, "rb") as f:
            found = json.loads(f.read(1 << 20))
    except OSError as err:
        from specc.runfolder import os_reason

        raise DataError(str(path), f"cannot be read: {os_reason(err)}", code="D120") from None
    except ValueError as err:  # not UTF-8, not JSON
        raise DataError(str(path), f"is not JSON ({err}); {fix}", code="D120") from None
    stages = [s.name for s in plan.stages]
    if not isinstance(found, dict):
        raise DataError(str(path), f"expected an object mapping stage names to learning rates, found "
                                   f"{type(found).__name__ if found is not None else 'null'}; {fix}", code="D120")
    for stage, lr in found.items():
        if stage not in stages:
            raise DataError(str(path), f"unknown stage '{stage}' (the spec's stages: {', '.join(stages)}); {fix}",
                            code="D120")
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
            raise DataError(str(path), f"stage '{stage}': expected a positive learning rate, found "
                                       f"{json.dumps(lr)}; {fix}", code="D120")
    return {stage: float(lr) for stage, lr in found.items()}


def train_run(spec: Spec, out: Path, device_name: str = "auto", sets: list[str] = (), quiet: bool = False,
              stdout=None, resume: bool = False, device_step: bool = False, graph: bool | None = None,
              force: bool = False, threads: int | None = None) -> RunResult:
    """Train a checked spec and write its run folder. Ctrl-C stops after the current step and
    leaves checkpoint.safetensors; `resume=True` goes on from it (same spec, same --set). `graph`:
    see specc.train.train (None: the CUDA-graph step wherever it applies). `threads`: torch's
    thread count while training (None: specc.train.default_threads). The folder is locked
    while the run writes it, and marked `running` in run.json until the run is complete; a folder
    that holds another run or files specc did not write is refused (UsageError), unless `force`
    (specc.runfolder). RunFinished: `resume` of a run that has finished."""
    from specc.train import Interrupted

    if resume and not (Path(out) / CHECKPOINT).is_file():
        load_resume(Path(out), spec, list(sets))  # the error, before anything is created
    folder = RunFolder(out)
    with folder.locked():
        state = None
        if resume:
            state = load_resume(folder.path, spec, list(sets))
            if folder.contents().status == "complete":
                raise RunFinished(f"{folder.path} holds a finished run: there is nothing to resume "
                                  f"(its model is {folder.file('model.onnx')})")
        folder.begin(spec.name, spec.source.text, list(sets), force=force, resume=resume)
        try:
            return _train_into(folder, state, spec, device_name, sets, quiet, stdout, resume, device_step, graph,
                               threads)
        except (Interrupted, KeyboardInterrupt):
            folder.end("interrupted")
            raise
        except BaseException as err:
            folder.end("failed", f"{type(err).__name__}: {err}".splitlines()[0])
            raise


def _train_into(folder: RunFolder, state, spec: Spec, device_name: str, sets, quiet: bool, stdout, resume: bool,
                device_step: bool, graph: bool | None, threads: int | None = None) -> RunResult:
    """train_run's work, in a folder it has locked and marked `running`."""
    import signal

    import torch
    from safetensors.torch import save

    from specc.checkpoint import check_fits, to_safetensors
    from specc.data.prepare import prepare
    from specc.plan import make_plan
    from specc.plot import loss_png
    from specc.train import Interrupted, Progress, StopRequest, default_threads, pick_device, torch_threads, train

    stdout = stdout or sys.stdout
    started = time.perf_counter()
    prepared = prepare(spec.data, spec.model.inputs)
    device = pick_device(device_name)
    graph, loop = _loop(spec, device, device_step, graph, quiet)
    plan = make_plan(spec, prepared)
    threads = threads or default_threads(spec, prepared)
    if state is not None:
        check_fits(folder.file(CHECKPOINT), state, spec, prepared, plan, device)
    folder.write_text("spec.spec", spec.source.text)
    if not quiet:
        print(_announcement(spec, prepared, plan, device, loop, threads, state), file=stdout)

    def meta(epoch: int) -> dict[str, str]:
        return checkpoint_metadata(spec, prepared.vocabs, sets, epoch)

    def weights(model, epoch: int) -> None:
        tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        folder.write_bytes("model.safetensors", save(tensors, metadata=meta(epoch)))

    def on_epoch(model, record, history, train_state):
        weights(model, record.epoch)
        folder.write_bytes(CHECKPOINT, to_safetensors(train_state, meta(record.epoch)))
        folder.write_metrics(history.records, spec.train.metrics)

    progress = None if quiet else Progress(spec.train.metrics, out=stdout, stages=len(plan.stages) > 1)
    stop = StopRequest()
    found = read_lr_find(folder.file(LR_FIND), plan)

    def on_lr_found(stage: str, lr: float, result) -> None:
        # recorded, so that training this spec into this folder again takes the same rate
        found[stage] = lr
        folder.write_json(LR_FIND, found)
        write_lr_find(folder, result, f"{spec.name}: stage {stage}", prefix=f"lr_find_{stage}")
        if not quiet:
            print(f"specc: stage {stage}: lr-find suggests {lr:.3g} (valley; {result.describe(('valley',))})",
                  file=stdout)
            if result.flat:
                from specc.lrfind import FLAT_NOTE

                print(f"specc: note: {FLAT_NOTE}", file=stdout)

    def on_sigint(signum, frame):
        if stop.requested:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        stop.requested = True

    previous = signal.signal(signal.SIGINT, on_sigint) if _main_thread() else None
    try:
        # The initial weights are the first checkpoint (epoch -1): a run that diverges in its first
        # epoch still leaves a loadable model.safetensors behind.
        with torch_threads(threads):
            model, history = train(spec, prepared, plan, device, progress=progress, on_epoch=on_epoch,
                                   on_start=lambda m: weights(m, -1), resume=state, stop=stop, found_lrs=found,
                                   on_lr_found=on_lr_found, device_step=device_step, graph=graph)
    except Interrupted as stopped:
        folder.write_bytes(CHECKPOINT, to_safetensors(stopped.state, meta(stopped.state.epoch)))
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    folder.write_bytes("loss.png", loss_png(history, plan.steps_per_epoch, f"{spec.name}: loss"))
    diff = _write_onnx(folder, spec, model, prepared)
    seconds = time.perf_counter() - started
    folder.write_json("run.json", {
        "status": "complete", "started": folder.record.get("started"),
        "spec": spec.name, "overrides": list(sets), "params": {p.name: p.value for p in spec.params},
        "device": device.type, "loop": loop, "threads": threads,
        "seconds": round(seconds, 3),
        "onnx_parity_max_abs_diff": diff, "torch": torch.__version__, "python": platform.python_version(),
        "train_rows": prepared.n_train, "valid_rows": prepared.n_valid, "epochs": plan.epochs,
        "resumed": resume, "final": history.records[-1].__dict__ if history.records else None,
    })
    if not quiet:
        from specc.train import duration

        print(f"specc: trained in {duration(seconds)}; wrote {folder.path}/ (model.onnx matches torch to {diff:.2g})",
              file=stdout)
    return RunResult(folder.path, history, diff, seconds)


def _loop(spec: Spec, device, device_step: bool, graph: bool | None, quiet: bool) -> tuple[bool, str]:
    """Whether to take the CUDA-graph step (None: wherever it applies, with a note on a CUDA device
    where it does not) and the loop's name for run.json."""
    if graph is None:
        from specc.fastpath import graph_reason

        reason = graph_reason(spec, device)
        graph = reason is None and not device_step
        if reason is not None and device.type == "cuda" and not quiet:
            print(f"specc: note: training with the plain loop, not the CUDA-graph step: {reason}", file=sys.stderr)
    return graph, "cuda-graph" if graph else "device-step" if device_step else "plain"


def _announcement(spec: Spec, prepared, plan, device, loop: str, threads: int, state) -> str:
    """The line that opens a run: what trains where, on how much data, and where a resumed run goes on."""
    where = ""
    if state is not None and state.stage >= len(plan.stages):  # stopped after its last epoch
        where = ", resuming after the last epoch: writing the model"
    elif state is not None:
        stage = f" of stage '{plan.stages[state.stage].name}'" if len(plan.stages) > 1 else ""
        where = f", resuming at epoch {state.epoch} step {state.step}{stage}"
    return (f"specc: training {spec.name} on {device.type} ({loop} loop, {threads} thread{'s' * (threads > 1)}): "
            f"{prepared.n_train} training rows, "
            f"{prepared.n_valid} validation rows, {plan.steps_per_epoch} steps per epoch{where}")


def _write_onnx(folder: RunFolder, spec: Spec, model, prepared) -> float:
    """Export the trained model to model.onnx, checked against torch on the parity rows first; the
    largest difference. ExportError (and no model.onnx) when the weights hold NaN or infinity."""
    import torch

    from specc.export import ExportError, parity, parity_rows, to_onnx

    if not all(bool(torch.isfinite(p).all()) for p in model.state_dict().values() if p.is_floating_point()):
        raise ExportError("the trained weights hold NaN or infinite values, so no model.onnx was written; "
                          f"the last checkpoint is in {folder.path}/")
    onnx_bytes = to_onnx(spec, model, prepared.vocabs).SerializeToString()
    diff = parity(spec, model, onnx_bytes, prepared.vocabs, parity_rows(spec, prepared))
    folder.write_bytes("model.onnx", onnx_bytes)
    return diff


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
