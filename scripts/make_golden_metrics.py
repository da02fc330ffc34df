"""Writes the metrics golden file of the lt-metrics tests (run from the repository root):

    python scripts/make_golden_metrics.py

Random logits and labels; accuracy, per-class accuracy, top-5, NLL (numpy) and ECE with 15 bins
from torchmetrics' MulticlassCalibrationError (which bins [lo, hi)) and from a numpy
implementation of Guo et al.'s (lo, hi] bins.
"""
import os

import numpy as np
import torch
from safetensors.numpy import save_file
from torchmetrics.classification import MulticlassCalibrationError

OUT = os.path.join("crates", "lt-metrics", "tests", "golden", "metrics.safetensors")


def main():
    rng = np.random.default_rng(0)
    n, c = 500, 12
    labels = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c)).astype(np.float32) * 2.0
    logits[np.arange(n), labels] += rng.normal(1.0, 1.0, n).astype(np.float32)
    z = logits.astype(np.float64)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    pred = p.argmax(1)
    acc = (pred == labels).mean()
    per_class = np.array([(pred[labels == k] == k).mean() for k in range(c)])
    top5 = np.mean([labels[i] in np.argsort(-z[i])[:5] for i in range(n)])
    nll = -np.log(p[np.arange(n), labels]).mean()
    conf = p.max(1)
    correct = (pred == labels).astype(np.float64)
    bins = 15
    idx = np.clip(np.ceil(conf * bins).astype(int) - 1, 0, bins - 1)
    ece_guo = sum(abs(correct[idx == b].mean() - conf[idx == b].mean()) * (idx == b).sum() / n for b in range(bins) if (idx == b).any())
    tm = MulticlassCalibrationError(num_classes=c, n_bins=bins, norm="l1")(torch.from_numpy(p), torch.from_numpy(labels)).item()
    out = {
        "logits": logits,
        "labels": labels.astype(np.int64),
        "accuracy": np.array([acc]),
        "per_class": per_class,
        "top5": np.array([top5]),
        "nll": np.array([nll]),
        "ece_guo": np.array([ece_guo]),
        "ece_torchmetrics": np.array([tm]),
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    save_file(out, OUT)
    print(OUT, os.path.getsize(OUT), "bytes; ece guo", ece_guo, "torchmetrics", tm)


if __name__ == "__main__":
    main()
