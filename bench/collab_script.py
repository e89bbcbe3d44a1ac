"""The whole-script reference of bench/startup.py: specs/collab.spec's work written by hand, with no specc.

What a person writes for the same run: pyarrow reads the ratings, numpy numbers the ids and holds out a
random 10%, an EmbeddingDotBias trains 5 epochs at batch 64 with fused AdamW under OneCycleLR
(lr 5e-3, betas (0.9, 0.99), wd 0.1), one thread; each epoch prints its losses and seconds (the span
specc's metrics.csv counts: the loop and validation), and the weights are saved as safetensors. It writes
no plot and no checkpoint, and an ONNX model only with --onnx (torch.onnx.export's TorchScript exporter,
the one torch 2.13 runs without onnxscript: a model of vocabulary indices, not of the raw ids specc's
takes, and checked against nothing). Usage: python bench/collab_script.py RATINGS_CSV OUT_FOLDER [--onnx]
"""

import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.csv as pacsv
import torch
import torch.nn as nn
from safetensors.torch import save_file

BATCH, EPOCHS, LR, FACTORS, Y_RANGE = 64, 5, 5e-3, 40, (0.0, 5.5)


class EmbeddingDotBias(nn.Module):
    def __init__(self, n_users: int, n_items: int):
        super().__init__()
        self.u, self.i = nn.Embedding(n_users, FACTORS), nn.Embedding(n_items, FACTORS)
        self.ub, self.ib = nn.Embedding(n_users, 1), nn.Embedding(n_items, 1)
        for emb in (self.u, self.i, self.ub, self.ib):
            nn.init.trunc_normal_(emb.weight, std=0.01, a=-0.02, b=0.02)

    def forward(self, users, items):
        res = (self.u(users) * self.i(items)).sum(1) + self.ub(users)[:, 0] + self.ib(items)[:, 0]
        return torch.sigmoid(res) * (Y_RANGE[1] - Y_RANGE[0]) + Y_RANGE[0]


def main() -> None:
    ratings, out = sys.argv[1], Path(sys.argv[2])
    torch.set_num_threads(1)
    torch.manual_seed(42)
    table = pacsv.read_csv(ratings)
    users = np.unique(table["user"].to_numpy(), return_inverse=True)[1]
    items = np.unique(table["item"].to_numpy(), return_inverse=True)[1]
    y = table["rating"].to_numpy().astype(np.float32)
    order = np.random.default_rng(42).permutation(len(y))
    cut = len(y) // 10
    valid, train = order[:cut], order[cut:]
    u, i, r = (torch.as_tensor(a[train]) for a in (users, items, y))
    vu, vi, vr = (torch.as_tensor(a[valid]) for a in (users, items, y))
    model = EmbeddingDotBias(int(users.max()) + 1, int(items.max()) + 1)
    steps = len(r) // BATCH
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.99), weight_decay=0.1, fused=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=steps * EPOCHS)
    loss_fn = nn.MSELoss()
    print("epoch train_loss valid_loss seconds", flush=True)
    for epoch in range(EPOCHS):
        start = time.perf_counter()
        perm = torch.randperm(len(r))
        losses = []
        for s in range(0, steps * BATCH, BATCH):
            idx = perm[s:s + BATCH]
            loss = loss_fn(model(u[idx], i[idx]), r[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.detach())
        with torch.no_grad():
            model.eval()
            valid_loss = float(loss_fn(model(vu, vi), vr))
            model.train()
        print(f"{epoch} {float(torch.stack(losses).mean()):.6f} {valid_loss:.6f} {time.perf_counter() - start:.4f}",
              flush=True)
    out.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), str(out / "model.safetensors"))
    if "--onnx" in sys.argv[3:]:
        model.eval()
        torch.onnx.export(model, (vu[:1], vi[:1]), str(out / "model.onnx"), dynamo=False,
                          input_names=["user", "item"], output_names=["rating"],
                          dynamic_axes={"user": {0: "n"}, "item": {0: "n"}, "rating": {0: "n"}})


if __name__ == "__main__":
    main()
