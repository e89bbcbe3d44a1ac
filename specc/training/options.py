"""Run options: what `specc train`'s command line (or a caller of specc.training.run.train_run)
chooses about a run -> one frozen value, read by the run and by the training loop. No torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TextIO

from specc.training.world import ONE, World


@dataclass(frozen=True, slots=True)
class RunOptions:
    """How a run trains and reports; what the spec says is the spec's.

    device       auto, cpu or cuda (or cuda:N): where one process trains (auto: cuda when torch
                 sees a GPU); a data-parallel process trains on its World's device
    sets         the --set values the spec was checked with, recorded with the run
    quiet        print nothing but errors
    stdout       where the table and the run's lines go (None: sys.stdout)
    resume       go on from the checkpoint in the run folder (same spec, same sets)
    device_step  take the device-resident step uncaptured (Adam; "flat": with fastpath.FlatAdam)
    graph        replay each step from a CUDA graph (None: wherever fastpath.graph_reason allows)
    force        replace a run already in the folder
    threads      torch's threads while training (None: specc.training.loop.default_threads)
    world        this process's part of a data-parallel run (specc.training.world)
    mlflow       also log the run to MLflow at this tracking URI

    specc.training.loop.train reads device, device_step, graph and world; the run all of them."""

    device: str = "auto"
    sets: tuple[str, ...] = ()
    quiet: bool = False
    stdout: TextIO | None = None
    resume: bool = False
    device_step: bool | str = False
    graph: bool | None = None
    force: bool = False
    threads: int | None = None
    world: World = ONE
    mlflow: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "sets", tuple(self.sets))  # a caller's list, kept as it was given
