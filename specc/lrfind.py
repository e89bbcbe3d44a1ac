"""The learning-rate finder: an exponential sweep of the learning rate over single batches, the
smoothed loss at each step, and suggestions; the model and optimizer are restored afterwards."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from specc.train import SMOOTH_BETA

START, END, STEPS, STOP_FACTOR = 1e-7, 10.0, 100, 4.0


@dataclass
class LRFindResult:
    lrs: list[float]
    losses: list[float]  # smoothed (debiased EWMA, beta 0.98)
    raw: list[float]
    stopped_early: bool
    suggestions: dict[str, float]


def valley(lrs, losses) -> float:
    """fastai's `valley`: the longest run of falling loss, then two thirds of the way down it."""
    n = len(losses)
    if n < 3:
        return lrs[int(np.argmin(losses))]
    longest = [1] * n
    start = end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and longest[i] < longest[j] + 1:
                longest[i] = longest[j] + 1
        if longest[end] < longest[i]:
            end, start = i, i - longest[i]
    third = (end - start) / 3
    return lrs[min(n - 1, max(0, start + int(third) + int(third / 2)))]


def suggest(lrs, losses) -> dict[str, float]:
    """steep: where the loss falls fastest against log(lr); minimum / 10; valley."""
    logs = np.log10(np.asarray(lrs))
    values = np.asarray(losses)
    slope = np.gradient(values, logs) if len(values) > 1 else np.zeros(1)
    return {"steep": float(lrs[int(np.argmin(slope))]),
            "minimum/10": float(lrs[int(np.argmin(values))] / 10),
            "valley": float(valley(lrs, values))}


def lr_find(model: torch.nn.Module, optimizer: torch.optim.Optimizer, step_loss, n_rows: int, batch: int,
            generator: torch.Generator, start: float = START, end: float = END, steps: int = STEPS,
            device=None) -> LRFindResult:
    """Sweep the learning rate from `start` to `end` over `steps` batches (stops when the smoothed
    loss passes 4x its minimum or stops being finite); `step_loss(idx)` is the loss of a batch.
    Weights, optimizer state and random number generators are as they were before."""
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    opt_state = optimizer.state_dict()
    torch_rng, gen_rng = torch.get_rng_state(), generator.get_state()
    groups = [dict(g) for g in optimizer.param_groups]
    lrs, smoothed, raw = [], [], []
    avg, best, stopped = 0.0, math.inf, False
    try:
        for k in range(steps):
            lr = start * (end / start) ** (k / max(1, steps - 1))
            for g in optimizer.param_groups:
                g["lr"] = lr
            idx = torch.randint(0, n_rows, (min(batch, n_rows),), generator=generator, device=device)
            loss = step_loss(idx)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            value = float(loss.detach())
            avg = SMOOTH_BETA * avg + (1 - SMOOTH_BETA) * value
            shown = avg / (1 - SMOOTH_BETA ** (k + 1))
            lrs.append(lr)
            raw.append(value)
            smoothed.append(shown)
            best = min(best, shown)
            if not math.isfinite(shown) or shown > STOP_FACTOR * best:
                stopped = True
                break
    finally:
        model.load_state_dict(weights)
        optimizer.load_state_dict(opt_state)
        for g, saved in zip(optimizer.param_groups, groups):
            g["lr"] = saved["lr"]
        torch.set_rng_state(torch_rng)
        generator.set_state(gen_rng)
    # Judge by the finite part, without the first tenth (the average is still settling) and the
    # last five steps (the blow-up), as fastai does.
    finite = [i for i, v in enumerate(smoothed) if math.isfinite(v)]
    keep = finite[len(finite) // 10:len(finite) - 5] if len(finite) > 20 else finite
    return LRFindResult(lrs, smoothed, raw, stopped, suggest([lrs[i] for i in keep], [smoothed[i] for i in keep]))
