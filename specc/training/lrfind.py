"""The learning-rate finder: an exponential sweep of the learning rate over single batches, the
smoothed loss at each step, and suggestions; the model and optimizer are restored afterwards."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from specc.training.metrics import SMOOTH_BETA

START, END, STEPS, STOP_FACTOR = 1e-7, 10.0, 100, 4.0
# A curve is flat when its largest fall is within FLAT_NOISE standard deviations of the smoothed
# loss's noise, or under FLAT_RELATIVE of the loss: its steepest point is then noise, not a signal.
FLAT_NOISE, FLAT_RELATIVE = 3.0, 0.01
FLAT_NOTE = ("the smoothed loss hardly changes over the sweep (it falls by no more than its noise): it has no "
             "steepest point")


@dataclass
class LRFindResult:
    lrs: list[float]
    losses: list[float]  # smoothed (debiased EWMA, beta 0.98)
    raw: list[float]
    stopped_early: bool
    suggestions: dict[str, float | None]  # steep is None on a flat curve
    flat: bool = False

    def describe(self, leave_out: tuple[str, ...] = ()) -> str:
        """The suggestions in one line, e.g. `steep 0.0123, minimum/10 0.0457, valley 0.00912`."""
        return ", ".join(f"{name} {shown(lr)}" for name, lr in self.suggestions.items() if name not in leave_out)


def shown(lr: float | None) -> str:
    """A suggestion as printed: the rate, or why there is none."""
    return "none (flat curve)" if lr is None else f"{lr:.3g}"


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


def suggest(lrs, losses, flat: bool = False) -> dict[str, float | None]:
    """steep: where the loss falls fastest against log(lr) (None on a flat curve); minimum / 10; valley."""
    logs = np.log10(np.asarray(lrs))
    values = np.asarray(losses)
    slope = np.gradient(values, logs) if len(values) > 1 else np.zeros(1)
    return {"steep": None if flat else float(lrs[int(np.argmin(slope))]),
            "minimum/10": float(lrs[int(np.argmin(values))] / 10),
            "valley": float(valley(lrs, values))}


def smoothing_noise(n: int, beta: float = SMOOTH_BETA) -> float:
    """Standard deviation of the debiased EWMA of n independent values of standard deviation 1:
    its weights are (1-beta) beta^(n-i) / (1-beta^n), whose squares sum to
    (1-beta)/(1+beta) * (1+beta^n)/(1-beta^n). 1 for n = 1; about 0.1 for a long run at 0.98."""
    return math.sqrt((1 - beta) / (1 + beta) * (1 + beta ** n) / (1 - beta ** n))


def is_flat(raw, smoothed, steps) -> bool:
    """Whether the smoothed loss at these steps (0-based) never falls by more than its noise: its
    largest fall (from the highest point before a step down to that step) is at most FLAT_NOISE
    standard deviations of the difference, or under FLAT_RELATIVE of the loss. The raw loss's
    noise is estimated from the differences of consecutive steps (robust: a median, and blind to a
    slow trend); the smoothed loss's from it with smoothing_noise."""
    steps = list(steps)
    if len(steps) < 3:
        return False  # too short to tell; the suggestions say what little there is
    values = np.asarray([smoothed[k] for k in steps], dtype=float)
    peaks = np.maximum.accumulate(values)
    low = int(np.argmax(peaks - values))
    high = int(np.argmax(values[:low + 1]))
    fall = values[high] - values[low]
    diffs = np.diff(np.asarray(raw[steps[0]:steps[-1] + 1], dtype=float))
    # the median absolute deviation times 1.4826 is a standard deviation (of normal noise); a
    # difference of two steps carries the noise of both, sqrt(2) times one's
    sd = 1.4826 * float(np.median(np.abs(diffs - np.median(diffs)))) / math.sqrt(2)
    noise = sd * math.hypot(smoothing_noise(steps[high] + 1), smoothing_noise(steps[low] + 1))
    return fall <= max(FLAT_NOISE * noise, FLAT_RELATIVE * abs(values[high]))


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
    flat = is_flat(raw, smoothed, keep)
    return LRFindResult(lrs, smoothed, raw, stopped, suggest([lrs[i] for i in keep], [smoothed[i] for i in keep], flat),
                        flat)
