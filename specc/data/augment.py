"""Augment: a training batch's image inputs -> the same batch flipped and shifted at random, on the
device where the batch is. Validation, lr-find's probes and the exported model never see it.

Each batch's draws come from a generator seeded by (spec seed, stage, epoch, step) alone, so a run
stopped and resumed draws exactly what a run that never stopped draws."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from specc.language.spec import Augment


def batch_generator(seed: int, stage: int, epoch: int, step: int, device: torch.device) -> torch.Generator:
    """The generator of one batch's draws: its seed from the batch's place in the run only."""
    generator = torch.Generator(device=device)
    generator.manual_seed(((seed * 1_000_003 + stage) * 1_000_003 + epoch) * 1_000_003 + step)
    return generator


def augment_images(aug: Augment, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A batch of images (N, C, H, W): half of them flipped left to right (`flip`), then each
    cropped back to (H, W) at a random place of the image padded with `crop` zeros (`crop`)."""
    n, _, h, w = x.shape
    if aug.flip:
        flipped = torch.rand(n, generator=generator, device=x.device) < 0.5
        x = torch.where(flipped[:, None, None, None], x.flip(-1), x)
    if aug.crop:
        p = aug.crop
        padded = F.pad(x, (p, p, p, p))
        dy = torch.randint(0, 2 * p + 1, (n,), generator=generator, device=x.device)
        dx = torch.randint(0, 2 * p + 1, (n,), generator=generator, device=x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (N, 1, H, 1)
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (N, 1, 1, W)
        batch = torch.arange(n, device=x.device)[:, None, None, None]
        channel = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        x = padded[batch, channel, rows, cols]
    return x


def augmenter(spec, stage: int):
    """xs, epoch, step -> the batch's inputs with its images augmented; None without `augment`."""
    aug = spec.data.augment
    if aug is None:
        return None
    order = {c.name: len(c.shape) == 3 for c in spec.data.inputs}  # the model's inputs, in its order
    images = [order[name] for name in spec.model.inputs]

    def apply(xs: list, epoch: int, step: int) -> list:
        generator = batch_generator(spec.train.seed, stage, epoch, step, xs[0].device)
        return [augment_images(aug, x, generator) if image else x for x, image in zip(xs, images)]
    return apply
