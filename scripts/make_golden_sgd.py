"""Writes the SGD golden trajectory of the lt-train tests (run from the repository root):

    python scripts/make_golden_sgd.py

A two-layer perceptron trained for 6 steps with torch.optim.SGD (momentum 0.9, Nesterov,
weight decay 5e-4) under a changing learning rate; the parameters after every step are stored.
"""
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

OUT = os.path.join("crates", "lt-train", "tests", "golden", "sgd_trajectory.safetensors")


def main():
    g = torch.Generator().manual_seed(0)
    params = {
        "w1": torch.randn(5, 4, generator=g) * 0.5,
        "b1": torch.randn(5, generator=g) * 0.1,
        "w2": torch.randn(3, 5, generator=g) * 0.5,
        "b2": torch.randn(3, generator=g) * 0.1,
    }
    x = torch.randn(6, 4, generator=g)
    y = torch.tensor([0, 2, 1, 1, 0, 2])
    lrs = [0.1, 0.2, 0.15, 0.05, 0.3, 0.01]
    out = {"x": x, "y": y}
    out.update({f"init.{k}": v.clone() for k, v in params.items()})
    ps = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    opt = torch.optim.SGD(list(ps.values()), lr=lrs[0], momentum=0.9, nesterov=True, weight_decay=5e-4)
    for step, lr in enumerate(lrs):
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad()
        h = F.relu(x @ ps["w1"].t() + ps["b1"])
        loss = F.cross_entropy(h @ ps["w2"].t() + ps["b2"], y)
        loss.backward()
        opt.step()
        for k, v in ps.items():
            out[f"step{step}.{k}"] = v.detach().clone()
    out["lrs"] = torch.tensor(lrs, dtype=torch.float64)
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    save_file({k: v.contiguous() for k, v in out.items()}, OUT)
    print(OUT, os.path.getsize(OUT), "bytes")


if __name__ == "__main__":
    main()
