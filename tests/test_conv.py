"""Convolutions, pooling and the resnet block: shapes checked before the data, ResNet34's body
against a hand-written torchvision-layout module with the same weights."""

import pytest
import torch
from torch import nn

from specc.model.lower import lower
from specc.model.sized import Sizes, size_model
from specc.training.run import load_spec

RESNET34 = """\
data {{
    source = npz("images.npz")
    inputs = [img: float(3, {size}, {size})]
    target = y: float
}}
model {{
    body = img |> resnet(layers=[3, 4, 6, 3], widths=[64, 128, 256, 512])
    out  = body |> global_avg_pool |> linear(1)
}}
train {{
    loss = mse
    fit(epochs=1, lr=1e-3)
}}
"""


class BasicBlock(nn.Module):
    """torchvision's BasicBlock, written out: two 3x3 convolutions, the input added back."""

    def __init__(self, n_in: int, n_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(n_in, n_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(n_out)
        self.conv2 = nn.Conv2d(n_out, n_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(n_out)
        self.down = None
        if stride != 1 or n_in != n_out:
            self.down = nn.Sequential(nn.Conv2d(n_in, n_out, 1, stride, bias=False), nn.BatchNorm2d(n_out))

    def forward(self, x):
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(y + (x if self.down is None else self.down(x)))


class ResNet34(nn.Module):
    """torchvision's resnet34 layout, with a one-number head in place of its 1000-class fc."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.pool = nn.MaxPool2d(3, 2, 1)
        blocks, n_in = [], 64
        for i, (n, width) in enumerate(zip([3, 4, 6, 3], [64, 128, 256, 512])):
            for j in range(n):
                blocks.append(BasicBlock(n_in, width, 2 if i > 0 and j == 0 else 1))
                n_in = width
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(512, 1)

    def forward(self, x):
        x = self.blocks(self.pool(torch.relu(self.bn1(self.conv1(x)))))
        return self.fc(x.mean(dim=(-2, -1)))


def _spec(tmp_path, size: int):
    path = tmp_path / "resnet34.spec"
    path.write_text(RESNET34.format(size=size))
    spec, _ = load_spec(path)
    return spec


def test_resnet34_body_has_torchvisions_parameter_count(tmp_path):
    sized = size_model(_spec(tmp_path, 224).model, Sizes({}))
    body = {name: n for name, n in sized.params().items() if sized.origin.get(name, name) == "body"}
    # torchvision's resnet34: 21,797,672 parameters, of which its fc holds 512 * 1000 + 1000
    assert sum(body.values()) == 21_797_672 - 513_000 == 21_284_672
    assert sized.node("body").shape == (512, 7, 7)


def test_resnet34_computes_what_the_hand_written_module_does(tmp_path):
    torch.manual_seed(0)
    model = lower(size_model(_spec(tmp_path, 64).model, Sizes({}))).eval()
    hand = ResNet34().eval()
    ours, theirs = model.state_dict(), hand.state_dict()
    assert [v.shape for v in ours.values()] == [v.shape for v in theirs.values()]  # the same layers, in order
    hand.load_state_dict(dict(zip(theirs, ours.values())))
    for module in hand.modules():  # running statistics other than 0 and 1, so that eval mode is tested
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    model.load_state_dict(dict(zip(ours, hand.state_dict().values())))
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), hand(x), atol=1e-5)


@pytest.mark.parametrize("model,message", [
    ("out = x |> conv2d(4, 3) |> flatten |> linear(1)",
     "conv2d needs an image (channels, height, width), found width 784"),
    ("out = x |> reshape((1, 28, 28)) |> max_pool(29) |> flatten |> linear(1)",
     "max_pool: its 29x29 window does not fit the 28x28 map"),
    ("out = x |> resnet(layers=[1, 1]) |> flatten |> linear(1)",
     "resnet: conv2d needs an image (channels, height, width), found width 784"),
    ("out = x |> reshape((1, 28, 28)) |> resnet(layers=[1, 1, 1, 1, 1]) |> flatten |> linear(1)",
     "resnet: one width per stage (5), found 4"),
    ("out = x |> reshape((1, 27, 28)) |> flatten |> linear(1)",
     "reshape: width 784 has 784 numbers a row, shape (1, 27, 28) holds 756"),
    ("out = x |> reshape((1, 28, 28)) |> conv2d(4, 4, padding=same) |> flatten |> linear(1)",
     "padding=same needs stride 1 and an odd kernel"),
])
def test_image_shapes_are_checked_before_the_data(tmp_path, model, message):
    from specc.language.diagnostics import SpecError

    path = tmp_path / "bad.spec"
    path.write_text('data {\n    source = npz("m.npz")\n    inputs = [x: float(784) / 255]\n    target = y: float\n}\n'
                    f"model {{\n    {model}\n}}\ntrain {{\n    loss = mse\n    fit(epochs=1, lr=1e-3)\n}}\n")
    with pytest.raises(SpecError) as err:
        load_spec(path)
    found = err.value.diagnostics[0]
    assert message in found.message and found.span.line == 7
