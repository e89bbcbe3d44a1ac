"""Training checkpoints: everything a run needs to continue exactly where it stopped (weights,
optimizer and scheduler state, random number generators, position in the epoch, history), in
one safetensors file: tensors as tensors, the rest as JSON in its metadata. Nothing is pickled.
Reading one checks all of it, so a damaged file is an error naming the file, never a crash."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import torch

from specc.language import codes
from specc.language.diagnostics import DataError

FORMAT = "specc-checkpoint-1"
AGAIN = "the run cannot go on from it: train it again with --force"


@dataclass
class TrainState:
    """Where training is: at `step` of `epoch` (the next step to run), with this epoch's `perm`."""

    epoch: int
    step: int
    perm: torch.Tensor
    model: dict
    optimizer: dict
    scheduler: dict | None
    torch_rng: torch.Tensor
    generator: torch.Tensor
    epoch_losses: torch.Tensor  # this epoch's raw losses so far
    epoch_lrs: list
    ewma: tuple
    records: list  # EpochRecord dicts of the finished epochs
    history: dict = field(default_factory=dict)  # step_loss, step_smooth, step_lr: float64 tensors
    epoch_seconds: float = 0.0
    stage: int = 0
    early: dict = field(default_factory=dict)  # early stopping: best value, its epoch, epochs waited
    best: dict = field(default_factory=dict)  # the best epoch's weights, when early stopping keeps them
    found_lrs: dict = field(default_factory=dict)  # stage -> the learning rate lr-find found


def to_safetensors(state: TrainState, metadata: dict[str, str]) -> bytes:
    from safetensors.torch import save

    tensors: dict[str, torch.Tensor] = {}
    for k, v in state.model.items():
        tensors[f"model.{k}"] = v.detach().cpu().contiguous()
    opt_state = {}
    for idx, entries in state.optimizer["state"].items():
        opt_state[str(idx)] = {}
        for name, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{idx}.{name}"] = value.detach().cpu().contiguous()
                opt_state[str(idx)][name] = "tensor"
            else:
                opt_state[str(idx)][name] = value
    tensors["perm"] = state.perm.cpu()
    tensors["torch_rng"] = state.torch_rng.cpu()
    tensors["generator"] = state.generator.cpu()
    tensors["epoch_losses"] = state.epoch_losses.double().cpu().reshape(-1)
    for name, values in state.history.items():
        tensors[f"history.{name}"] = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    for k, v in state.best.items():
        tensors[f"best.{k}"] = v.detach().cpu().contiguous()
    meta = dict(metadata)
    meta["specc.checkpoint"] = json.dumps({
        "format": FORMAT, "epoch": state.epoch, "step": state.step, "epoch_lrs": state.epoch_lrs,
        "ewma": list(state.ewma), "records": state.records, "epoch_seconds": state.epoch_seconds,
        "stage": state.stage, "early": state.early, "found_lrs": state.found_lrs,
        "optimizer": {"state": opt_state, "param_groups": state.optimizer["param_groups"]},
        "scheduler": state.scheduler,
    })
    return save(tensors, metadata=meta)


def read_safetensors(path, data: bytes | None = None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A safetensors file's tensors and metadata (read whole, not memory-mapped: specc rewrites
    its files while a run goes on); DataError naming the file when it cannot be read, is cut
    short, or is not safetensors at all. `data`: the file's bytes, read already (by rank 0)."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    from specc.training.runfolder import os_reason

    try:
        if data is None:
            with open(path, "rb") as f:
                data = f.read()
    except OSError as err:
        raise DataError(str(path), f"cannot be read: {os_reason(err)}", code=codes.UNREADABLE_PATH) from None
    try:
        tensors = load(data)
    except SafetensorError as err:
        raise DataError(str(path), f"is not a readable safetensors file ({err}): it is damaged or cut short",
                        code=codes.BAD_MODEL_FILE) from None
    # load() has read and checked the header: 8 bytes of length, then JSON with the metadata.
    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
    return tensors, header.get("__metadata__") or {}


def from_safetensors(path, data: bytes | None = None) -> tuple[TrainState, dict[str, str]]:
    """The training state in a checkpoint file (or its bytes), every part checked (DataError naming the file)."""
    tensors, meta = read_safetensors(path, data)

    def bad(what: str):
        raise DataError(str(path), f"{what}; {AGAIN}", code=codes.BAD_RUN_STATE)

    if "specc.checkpoint" not in meta:
        bad("no training state in its metadata: it is not a checkpoint of `specc train`")
    try:
        info = json.loads(meta["specc.checkpoint"])
    except ValueError:
        info = None
    if not isinstance(info, dict):
        bad("its training state is not a JSON object")
    if info.get("format") != FORMAT:
        bad(f"unknown checkpoint format {json.dumps(info.get('format'))} (this specc reads {FORMAT!r})")
    _check_info(info, tensors, bad)
    opt_state = {}
    for idx, entries in info["optimizer"]["state"].items():
        opt_state[int(idx)] = {name: (tensors[f"optimizer.{idx}.{name}"] if value == "tensor" else value)
                               for name, value in entries.items()}
    groups = info["optimizer"]["param_groups"]
    for g in groups:  # JSON has no tuples; torch's optimizers keep betas as one
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    state = TrainState(
        epoch=info["epoch"], step=info["step"], perm=tensors["perm"],
        model={k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")},
        optimizer={"state": opt_state, "param_groups": groups}, scheduler=info["scheduler"],
        torch_rng=tensors["torch_rng"], generator=tensors["generator"], epoch_losses=tensors["epoch_losses"],
        epoch_lrs=info["epoch_lrs"], ewma=tuple(info["ewma"]), records=info["records"],
        history={k[len("history."):]: v.tolist() for k, v in tensors.items() if k.startswith("history.")},
        epoch_seconds=info.get("epoch_seconds", 0.0), stage=info.get("stage", 0), early=info.get("early", {}),
        best={k[len("best."):]: v for k, v in tensors.items() if k.startswith("best.")},
        found_lrs=info.get("found_lrs", {}))
    return state, meta


def _count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _number(v) -> bool:  # a loss may be NaN in a run that goes on with stop_on_nan = false
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_info(info: dict, tensors: dict, bad) -> None:
    """The checkpoint's JSON and tensors have every part, of the right kind (what `train` takes)."""
    from dataclasses import fields

    from specc.training.metrics import EpochRecord

    for key in ("epoch", "step", "stage"):
        if not _count(info.get(key, 0 if key == "stage" else None)):  # older checkpoints have no stage
            bad(f"'{key}' is {json.dumps(info.get(key))}, not a count")
    lrs = info.get("epoch_lrs")
    if not isinstance(lrs, list) or not all(_finite(v) for v in lrs):
        bad("'epoch_lrs' is not a list of finite learning rates")
    ewma = info.get("ewma")
    if not (isinstance(ewma, list) and len(ewma) == 2 and _number(ewma[0]) and _count(ewma[1])):
        bad("'ewma' is not [average, count]")
    names = {f.name for f in fields(EpochRecord)}
    records = info.get("records")
    if not isinstance(records, list) or not all(isinstance(r, dict) and r.keys() == names for r in records):
        bad("'records' is not a list of epoch records")
    if not _finite(info.get("epoch_seconds", 0.0)) or info.get("epoch_seconds", 0.0) < 0:
        bad("'epoch_seconds' is not a duration")
    if not isinstance(info.get("early", {}), dict):
        bad("'early' is not an object")
    found = info.get("found_lrs", {})
    if not isinstance(found, dict) or not all(_finite(v) and v > 0 for v in found.values()):
        bad("'found_lrs' does not map stages to positive learning rates")
    if info.get("scheduler") is not None and not isinstance(info["scheduler"], dict):
        bad("'scheduler' is not an object")
    opt = info.get("optimizer")
    if not (isinstance(opt, dict) and isinstance(opt.get("state"), dict) and isinstance(opt.get("param_groups"), list)):
        bad("'optimizer' is not {state, param_groups}")
    for group in opt["param_groups"]:
        if not (isinstance(group, dict) and isinstance(group.get("params"), list)
                and all(_count(p) for p in group["params"]) and _finite(group.get("lr"))):
            bad("an optimizer parameter group is not {params, lr, ...}")
        numbers = [v for v in group.values() if _number(v)] + list(group.get("betas", ()))
        if not all(_finite(v) for v in numbers):
            bad("an optimizer parameter group holds a number that is NaN or infinite")
    for idx, entries in opt["state"].items():
        if not (idx.isdigit() and isinstance(entries, dict)):
            bad(f"optimizer state {json.dumps(idx)} is not a parameter's")
        for name, value in entries.items():
            if value == "tensor":
                if f"optimizer.{idx}.{name}" not in tensors:
                    bad(f"tensor 'optimizer.{idx}.{name}' is missing")
            elif not (value is None or isinstance(value, bool) or _finite(value)):
                bad(f"optimizer state '{idx}.{name}' is {json.dumps(value)}, not a finite number")
    kinds = {"perm": torch.int64, "torch_rng": torch.uint8, "generator": torch.uint8, "epoch_losses": torch.float64}
    for name, dtype in kinds.items():
        if name not in tensors:
            bad(f"tensor '{name}' is missing")
        if tensors[name].dtype != dtype or tensors[name].dim() != 1:
            bad(f"tensor '{name}' is {tensors[name].dtype} of shape {tuple(tensors[name].shape)}, not a list "
                f"of {dtype}")
    if not any(k.startswith("model.") for k in tensors):
        bad("it holds no model weights")


def check_fits(path, state: TrainState, spec, prepared, plan, device) -> None:
    """DataError unless the checkpoint fits this spec's model, this data and this plan: a data file
    that changed since the run started, or a run resumed on another device, is caught here rather
    than as a crash inside torch."""
    from specc.model.lower import lower
    from specc.model.sized import sized_model
    from specc.training.optim import module_groups, stage_groups

    def bad(what: str):
        raise DataError(str(path), f"{what}; the run cannot go on from it", code=codes.BAD_RUN_STATE)

    stages, steps, n = plan.stages, plan.steps_per_epoch, prepared.n_train
    if state.stage > len(stages):
        bad(f"it is at stage {state.stage + 1}, but the spec has {len(stages)}")
    if state.stage < len(stages) and (state.epoch >= stages[state.stage].epochs or state.step >= steps):
        bad(f"it is at epoch {state.epoch} step {state.step} of stage '{stages[state.stage].name}', which has "
            f"{stages[state.stage].epochs} epochs of {steps} steps")
    if state.perm.numel() not in (0, n) or (state.perm.numel() and not (0 <= int(state.perm.min())
                                                                        and int(state.perm.max()) < n)):
        bad(f"its epoch's order is of {state.perm.numel()} rows, but the data has {n} training rows now (has the "
            "data changed since the run started?)")
    if state.epoch_losses.numel() != state.step or len(state.epoch_lrs) != state.step:
        bad(f"it holds {state.epoch_losses.numel()} losses of the epoch, but is at step {state.step}")
    # The shapes of the model the spec builds on this data, without building its weights.
    with torch.device("meta"):
        model = lower(sized_model(spec, prepared), prepared.stats, tables=prepared.tables)
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for part, weights in (("model", state.model), ("best", state.best or None)):
        if weights is None:
            continue
        got = {k: tuple(v.shape) for k, v in weights.items()}
        if got.keys() != want.keys():
            extra, missing = sorted(got.keys() - want.keys()), sorted(want.keys() - got.keys())
            bad(f"its {part} weights are not this spec's ("
                + (f"no {', '.join(map(repr, missing[:3]))}" if missing else f"an unknown {extra[0]!r}") + ")")
        for k in want:
            if got[k] != want[k]:
                bad(f"'{k}' is {got[k]} in its {part} weights but {want[k]} here (has the data changed since the "
                    "run started?)")
    if state.optimizer["param_groups"] and state.stage < len(stages):
        # the stage's trainable parameters in the optimizer's order, as specc.training.loop.train makes them
        params = [ps for ps, _ in stage_groups(model, module_groups(model), plan, stages[state.stage])]
        saved = state.optimizer["param_groups"]
        if [len(g["params"]) for g in saved] != [len(ps) for ps in params]:
            bad("its optimizer's parameter groups are not this stage's")
        flat = [p for ps in params for p in ps]
        for idx, entries in state.optimizer["state"].items():
            if idx >= len(flat):
                bad(f"its optimizer has state for parameter {idx}, but the stage trains {len(flat)}")
            for name, value in entries.items():
                if torch.is_tensor(value) and value.dim() and tuple(value.shape) != tuple(flat[idx].shape):
                    bad(f"optimizer state '{idx}.{name}' is {tuple(value.shape)}, its parameter "
                        f"{tuple(flat[idx].shape)}")
    if state.torch_rng.numel() != torch.get_rng_state().numel():
        bad("its random number generator state is not torch's")
    if state.generator.numel() != torch.Generator(device=device).get_state().numel():
        bad(f"its batch order's generator is not of a {device.type} device: resume it with the --device it "
            "was trained on")
