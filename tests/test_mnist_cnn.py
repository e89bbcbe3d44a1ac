"""specs/mnist_cnn.spec: the convnet its comments describe (against a hand-written module with the
same weights), and a short run on the shipped sample whose exported model scores what training
reported."""

import csv

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from helpers import MNIST_SAMPLE, ROOT
from specc.commands.cli import main
from specc.data.prepare import prepare
from specc.inference.evaluate import evaluate_file
from specc.model.sized import sized_model
from specc.training.loop import build_model
from specc.training.run import load_spec

SPEC = ROOT / "specs" / "mnist_cnn.spec"


class ConvNet(nn.Module):
    """What the spec's comments say it is: 3x3 convolutions without bias, batchnorm, ReLU and 2x2
    max pooling (28 -> 14 -> 7), then linear(128), ReLU, dropout and linear(10)."""

    def __init__(self):
        super().__init__()
        self.conv2d = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.batchnorm = nn.BatchNorm2d(8)
        self.conv2d_1 = nn.Conv2d(8, 32, 3, padding=1, bias=False)
        self.batchnorm_1 = nn.BatchNorm2d(32)
        self.linear = nn.Linear(32 * 7 * 7, 128)
        self.out = nn.Linear(128, 10)

    def forward(self, x):
        h = (x / 255).reshape(-1, 1, 28, 28)
        h = F.max_pool2d(F.relu(self.batchnorm(self.conv2d(h))), 2)
        h = F.max_pool2d(F.relu(self.batchnorm_1(self.conv2d_1(h))), 2)
        h = F.dropout(F.relu(self.linear(h.flatten(1))), 0.25, self.training)
        return self.out(h)


def test_the_spec_is_the_convnet_its_comments_describe():
    spec, _ = load_spec(SPEC)
    prepared = prepare(spec.data, spec.model.inputs)
    shapes = {node.name: node.shape for node in sized_model(spec, prepared).nodes}
    assert (shapes["c1"], shapes["c2"], shapes["flatten"]) == ((8, 14, 14), (32, 7, 7), (1568,))
    model = build_model(spec, prepared)
    hand = ConvNet()
    hand.load_state_dict(model.state_dict())  # the same names and shapes, or this raises
    assert sum(p.numel() for p in model.parameters()) == 204_578
    x = torch.as_tensor(prepared.valid["x"][:32])
    # Batchnorm's running statistics move in training mode: give both the same few steps first.
    model.train(), hand.train()
    for s in range(0, 96, 32):
        torch.manual_seed(s)
        a = model(torch.as_tensor(prepared.train["x"][s:s + 32]))
        torch.manual_seed(s)
        b = hand(torch.as_tensor(prepared.train["x"][s:s + 32]))
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)  # the same dropout masks, too
    model.eval(), hand.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), hand(x), rtol=1e-5, atol=1e-5)


def test_one_epoch_on_the_sample_learns_and_its_onnx_scores_what_training_reported(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(SPEC), "--set", "train.fit.epochs=1", "--threads", "1", "--quiet",
                 "--out", str(run)]) == 0
    capsys.readouterr()
    with open(run / "metrics.csv", newline="") as f:
        (record,) = list(csv.DictReader(f))
    accuracy, loss = float(record["accuracy"]), float(record["valid_loss"])
    assert accuracy > 0.9  # one epoch of 78 steps; the 5-epoch spec reaches about 0.98 on the sample
    scores = evaluate_file(run / "model.onnx", MNIST_SAMPLE, split="valid", device="cpu")
    assert scores["rows"] == 1000 and scores["arrays"] == {"x": "x_valid", "y": "y_valid"}
    assert abs(scores["accuracy"] - accuracy) <= 1 / 1000 + 1e-6  # at most one image flipped by rounding
    assert np.isclose(scores["loss"], loss, rtol=1e-4)
