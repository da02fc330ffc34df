"""Writes the loss golden file of the lt-retrain tests (run from the repository root):

    python scripts/make_golden_losses.py

Random logits, labels and class counts; logit-adjusted CE, Balanced Softmax, DisAlign's
re-weighted CE (weights (1/pi)^rho normalised to sum C) and the self-distillation term
T^2 KL(mean_m softmax(t_m/T) || softmax(s/T)), computed with torch.nn.functional.
"""
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

OUT = os.path.join("crates", "lt-retrain", "tests", "golden", "losses.safetensors")


def main():
    g = torch.Generator().manual_seed(0)
    b, c, m = 7, 5, 3
    logits = torch.randn(b, c, generator=g) * 2
    labels = torch.tensor([0, 4, 2, 2, 1, 3, 0])
    counts = torch.tensor([120.0, 60.0, 25.0, 9.0, 4.0])
    prior = counts / counts.sum()
    tau = 1.3
    la = F.cross_entropy(logits + tau * prior.log(), labels)
    bs = F.cross_entropy(logits + counts.log(), labels)
    rho = 1.2
    w = (1.0 / prior) ** rho
    w = w / w.sum() * c
    per = F.cross_entropy(logits, labels, reduction="none")
    disalign = (w[labels] * per).sum() / w[labels].sum()
    teachers = torch.randn(m, b, c, generator=g)
    student = torch.randn(b, c, generator=g)
    t = 2.0
    pt = F.softmax(teachers / t, dim=-1).mean(0)
    kd = F.kl_div(F.log_softmax(student / t, dim=-1), pt, reduction="batchmean") * t * t
    out = {
        "logits": logits,
        "labels": labels.to(torch.int64),
        "counts": counts,
        "teachers": teachers,
        "student": student,
        "la": la.reshape(1),
        "balanced_softmax": bs.reshape(1),
        "disalign_weights": w,
        "disalign_loss": disalign.reshape(1),
        "distillation": kd.reshape(1),
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    save_file({k: v.contiguous().float() if v.is_floating_point() else v for k, v in out.items()}, OUT, metadata={"tau": str(tau), "rho": str(rho), "temperature": str(t)})
    print(OUT, os.path.getsize(OUT), "bytes")


if __name__ == "__main__":
    main()
