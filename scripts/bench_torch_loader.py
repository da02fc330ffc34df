"""PyTorch reference of `lt bench loader --folder DIR`: torchvision's ImageFolder with the same
training transform (RandomResizedCrop, horizontal flip, to tensor, ImageNet normalisation) in a
DataLoader with the same batch size and worker processes; one JSON object on stdout. Used by
`cargo xtask bench` and `scripts/gpu_check.sh`:

    python scripts/bench_torch_loader.py --folder DIR --workers 12 [--device cuda] [--eval]

`--eval` times the evaluation transform instead (Resize(size * 256 / 224), CenterCrop(size)), as
`lt bench loader --eval` does.

On a GPU each batch is copied there from pinned memory (`pin_memory=True`, `non_blocking`), as
a PyTorch training loop does. The timing starts after the first batch (worker start-up).
"""
import argparse
import json
import time

import torch
import torchvision
from torchvision import transforms as T


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--folder", required=True)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batches", type=int, default=300)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--device", default="cpu")
    p.add_argument("--eval", action="store_true")
    a = p.parse_args()
    dev = torch.device(a.device)
    if a.eval:
        crop = [T.Resize(a.image_size * 256 // 224), T.CenterCrop(a.image_size)]
    else:
        crop = [T.RandomResizedCrop(a.image_size), T.RandomHorizontalFlip()]
    tf = T.Compose(crop + [T.ToTensor(), T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    ds = torchvision.datasets.ImageFolder(a.folder, transform=tf)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=a.batch, shuffle=True, num_workers=a.workers, drop_last=False,
        pin_memory=dev.type == "cuda", persistent_workers=True, prefetch_factor=4,
    )
    images, start = 0, None
    while images < a.batch * a.batches:
        for x, y in loader:
            x = x.to(dev, non_blocking=True)
            y = y.to(dev, non_blocking=True)
            if start is None:
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                continue
            images += len(y)
            if images >= a.batch * a.batches:
                break
    if dev.type == "cuda":
        torch.cuda.synchronize()
    secs = time.perf_counter() - start
    print(json.dumps({
        "bench": "loader", "impl": "torchvision", "eval": a.eval, "batch": a.batch, "workers": a.workers,
        "images": images, "images_per_sec": images / secs, "device": a.device,
        "torch": torch.__version__, "torchvision": torchvision.__version__,
    }))


if __name__ == "__main__":
    main()
