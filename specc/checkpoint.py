"""Training checkpoints: everything a run needs to continue exactly where it stopped (weights,
optimizer and scheduler state, random number generators, position in the epoch, history), in
one safetensors file: tensors as tensors, the rest as JSON in its metadata. Nothing is pickled."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch

FORMAT = "specc-checkpoint-1"


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


def from_safetensors(path) -> tuple[TrainState, dict[str, str]]:
    from safetensors import safe_open
    from safetensors.torch import load

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    # Read the bytes (tensors of their own), not a memory map: the file is rewritten every epoch.
    with open(path, "rb") as f:
        tensors = load(f.read())
    info = json.loads(meta["specc.checkpoint"])
    if info.get("format") != FORMAT:
        raise ValueError(f"unknown checkpoint format {info.get('format')!r}")
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
