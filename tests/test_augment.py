"""Augmentation of image batches: flips and padded crops by hand, the same draws on a resumed run,
refused where no input is an image, never in validation or export."""

import numpy as np
import pytest
import torch

from specc.commands.cli import main
from specc.data.augment import augment_images, batch_generator
from specc.language.spec import Augment


def test_flip_and_crop_by_hand():
    x = torch.arange(2 * 1 * 3 * 3, dtype=torch.float32).reshape(2, 1, 3, 3)
    g = batch_generator(0, 0, 0, 0, torch.device("cpu"))
    flipped = torch.rand(2, generator=g) < 0.5
    dy = torch.randint(0, 3, (2,), generator=g)
    dx = torch.randint(0, 3, (2,), generator=g)
    got = augment_images(Augment(flip=True, crop=1), x, batch_generator(0, 0, 0, 0, torch.device("cpu")))
    for k in range(2):
        want = x[k, 0].flip(-1) if flipped[k] else x[k, 0]
        padded = np.zeros((5, 5), dtype=np.float32)
        padded[1:4, 1:4] = want.numpy()
        assert np.array_equal(got[k, 0].numpy(), padded[dy[k]:dy[k] + 3, dx[k]:dx[k] + 3])


def test_each_batch_draws_from_its_own_place_in_the_run():
    x = torch.rand(64, 3, 8, 8)
    aug = Augment(flip=True, crop=2)
    one = augment_images(aug, x, batch_generator(1, 0, 2, 5, torch.device("cpu")))
    again = augment_images(aug, x, batch_generator(1, 0, 2, 5, torch.device("cpu")))
    other = augment_images(aug, x, batch_generator(1, 0, 2, 6, torch.device("cpu")))
    assert torch.equal(one, again) and not torch.equal(one, other)


SPEC = """\
data {{
    source = npz("pics.npz")
    inputs = [img: float(1, 6, 6) / 255]
    target = y: category
    batch  = 8
    augment = {augment}
}}
model {{
    out = img |> conv2d(4, 3, padding=same) |> relu |> global_avg_pool |> linear(classes)
}}
train {{
    loss = cross_entropy
    metrics = [accuracy]
    fit(epochs=2, lr=1e-2)
}}
"""


def _folder(tmp_path, augment="[flip, crop(padding=1)]"):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "pics.npz", img_train=rng.integers(0, 255, (48, 1, 6, 6)).astype(np.float32),
             y_train=rng.integers(0, 3, 48), img_valid=rng.integers(0, 255, (16, 1, 6, 6)).astype(np.float32),
             y_valid=rng.integers(0, 3, 16))
    path = tmp_path / "aug.spec"
    path.write_text(SPEC.format(augment=augment))
    return path


def test_a_stopped_and_resumed_run_augments_as_one_that_never_stopped(tmp_path):
    from helpers import stopped_and_resumed, trained

    whole, resumed = stopped_and_resumed(_folder(tmp_path), 7)
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    plain = tmp_path / "plain"
    plain.mkdir()
    flipped_only = trained(_folder(plain, augment="[flip]"))[2]
    assert any(not torch.equal(a, b) for a, b in zip(whole.state_dict().values(), flipped_only.state_dict().values()))


def test_augment_needs_an_image_input(tmp_path, capsys):
    path = _folder(tmp_path)
    path.write_text(path.read_text().replace("float(1, 6, 6) / 255", "float(36) / 255").replace(
        "img |> conv2d", "img |> reshape((1, 6, 6)) |> conv2d"))
    assert main(["check", "--no-data", str(path)]) == 1
    err = capsys.readouterr().err
    assert "error[E311]: augment changes images, but no input is an image (channels, height, width)" in err


def test_training_with_augment_exports_an_unaugmented_model(tmp_path):
    run = tmp_path / "run"
    assert main(["train", str(_folder(tmp_path)), "--out", str(run), "--quiet"]) == 0
    assert (run / "model.onnx").exists()  # the export's parity check ran the model on unchanged rows
