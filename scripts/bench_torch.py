"""PyTorch reference of `lt bench backbone` (same model, batch, steps, median timing), one JSON
object on stdout. Used by `cargo xtask bench` when torch is importable:

    python scripts/bench_torch.py --arch resnet32 --batch 128 --mode train [--channels-last]
"""
import argparse
import json
import os
import resource
import sys
import time

import torch
import torch.nn.functional as F
import torchvision

sys.path.insert(0, os.path.dirname(__file__))
from torch_models import CifarResNet  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--arch", default="resnet32")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--mode", default="train")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    if a.arch == "resnet50":
        model = torchvision.models.resnet50(num_classes=a.classes)
    else:
        model = CifarResNet(int(a.arch.replace("resnet", "")), a.classes)
    model = model.to(dev)
    x = torch.randn(a.batch, 3, a.size, a.size, device=dev)
    y = torch.arange(a.batch, device=dev) % a.classes
    if a.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)

    def step():
        if a.mode == "train":
            model.train()
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
        else:
            model.eval()
            with torch.no_grad():
                model(x).sum().item()
        if dev.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(a.warmup):
        step()
    times = []
    for _ in range(a.steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    times.sort()
    median = times[len(times) // 2]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    out = {
        "bench": "backbone",
        "impl": "pytorch" + ("-channels-last" if a.channels_last else ""),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "arch": a.arch,
        "mode": a.mode,
        "batch": a.batch,
        "size": a.size,
        "device": a.device,
        "median_step_seconds": median,
        "images_per_sec": a.batch / median,
        "peak_rss_mib": peak,
    }
    if dev.type == "cuda":
        out["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(out))


if __name__ == "__main__":
    main()
