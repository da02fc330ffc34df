"""PyTorch reference of `lt bench backbone` (same model, batch, steps, median timing), one JSON
object per variant on stdout. Used by `cargo xtask bench` when torch is importable, and by
`scripts/gpu_check.sh` on a GPU machine:

    python scripts/bench_torch.py --arch resnet32 --batch 128 --mode train [--channels-last]
    python scripts/bench_torch.py --device cuda --variants f32-strict-cl,f32,f32-cl,bf16-cl ...

Variants (one process runs them in turn; each reports its own peak CUDA memory):
  f32            NCHW, float32 (cuDNN may use TF32 for convolutions: PyTorch's default)
  f32-cl         channels-last, float32 (TF32 allowed)
  f32-strict     NCHW, float32 with TF32 off (full FP32 math, like the project's f32 mode)
  f32-strict-cl  channels-last, float32 with TF32 off
  bf16-cl        channels-last, bf16 autocast (float32 master weights)
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

VARIANTS = {
    # name: (channels_last, autocast dtype, allow TF32)
    "f32": (False, None, True),
    "f32-cl": (True, None, True),
    "f32-strict": (False, None, False),
    "f32-strict-cl": (True, None, False),
    "bf16-cl": (True, torch.bfloat16, True),
}


def build(a, dev):
    if a.arch == "resnet50":
        return torchvision.models.resnet50(num_classes=a.classes).to(dev)
    return CifarResNet(int(a.arch.replace("resnet", "")), a.classes).to(dev)


def run_variant(a, dev, name):
    channels_last, autocast, tf32 = VARIANTS[name]
    if dev.type == "cuda":
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.benchmark = True
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(0)
    model = build(a, dev)
    x = torch.randn(a.batch, 3, a.size, a.size, device=dev)
    y = torch.arange(a.batch, device=dev) % a.classes
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)

    def forward():
        if autocast is None:
            return model(x)
        with torch.autocast(device_type=dev.type, dtype=autocast):
            return model(x)

    def step():
        if a.mode == "train":
            model.train()
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(forward().float(), y).backward()
            opt.step()
        else:
            model.eval()
            with torch.no_grad():
                forward().float().sum().item()
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
    out = {
        "bench": "backbone",
        "impl": "pytorch-" + name,
        "variant": name,
        "torch": torch.__version__,
        # The vector instruction set ATen's kernels run (ATEN_CPU_CAPABILITY can lower it).
        "cpu_capability": torch.backends.cpu.get_cpu_capability() if a.device == "cpu" else None,
        "threads": torch.get_num_threads(),
        "arch": a.arch,
        "mode": a.mode,
        "batch": a.batch,
        "size": a.size,
        "device": a.device,
        "median_step_seconds": median,
        "images_per_sec": a.batch / median,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }
    if dev.type == "cuda":
        out["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
        out["device_name"] = torch.cuda.get_device_name(dev)
    del model, opt, x, y
    return out


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
    p.add_argument("--channels-last", action="store_true", help="the f32-cl variant alone")
    p.add_argument("--variants", default="", help="comma-separated variants (see the module doc)")
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    variants = [v for v in a.variants.split(",") if v] or ["f32-cl" if a.channels_last else "f32"]
    for name in variants:
        if name not in VARIANTS:
            sys.exit(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")
    for name in variants:
        try:
            out = run_variant(a, dev, name)
        except Exception as e:  # one variant's failure (e.g. out of memory) must not stop the others
            out = {"bench": "backbone", "impl": "pytorch-" + name, "variant": name, "arch": a.arch,
                   "mode": a.mode, "batch": a.batch, "size": a.size, "device": a.device, "error": repr(e)}
        # The plain invocation keeps the historical names (`pytorch`, `pytorch-channels-last`).
        if not a.variants:
            out["impl"] = "pytorch" + ("-channels-last" if a.channels_last else "")
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
