"""The GPU check's benchmark table from its JSON lines (`lt bench backbone` and
`scripts/bench_torch.py --variants ...`), as Markdown on stdout:

    python3 scripts/bench_table.py OUT/bench.jsonl
    python3 scripts/bench_table.py --verdict OUT/bench.jsonl   # issue #11's bars, PASS/FAIL

Ratios: the project's f32 (full FP32 convolutions) against PyTorch's f32 with TF32 off
(channels-last), the project's TF32 convolutions against PyTorch's best default-f32 layout
(cuDNN's TF32 allowed), and the project's bf16 mixed precision against PyTorch's bf16 autocast
(channels-last). Memory: the peak of the device's memory pool for the project (or what
nvidia-smi saw, including the CUDA context), torch.cuda.max_memory_allocated for PyTorch.
Further tables: the taped executor against candle's autograd, and the settings that
bench-more changes one at a time against the default step of the same call.
"""
import json
import math
import os
import sys


def fmt(v, unit=""):
    return "-" if v is None else f"{v:,.0f}{unit}"


def load(path):
    """The rows of a bench.jsonl by configuration `(arch, mode, batch, size)`, then by column name."""
    rows = {}
    for line in open(path):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            d = json.loads(line)
        except ValueError:  # a line cut off when its run was stopped: the other rows still count
            print(f"{path}: left out a line that is not JSON: {line[:80]}", file=sys.stderr)
            continue
        key = (d.get("arch"), d.get("mode"), d.get("batch"), d.get("size"))
        impl = d.get("impl", "")
        if "autograd" in impl:
            name = "autograd-bf16" if d.get("precision") == "bf16" else ("autograd-tf32" if d.get("tf32") else "autograd-f32")
        elif "-tf32-" in impl and "project" not in impl:
            name = "setting:" + impl.split("-tf32-", 1)[1]
        elif "project-tf32" in impl:
            name = "project-tf32"
        elif "project" in impl and d.get("precision") == "bf16":
            name = "project-bf16"
        elif "project" in impl:
            name = "project-f32"
        else:
            name = d.get("variant", impl)
        rows.setdefault(key, {})[name] = d
    return rows


def finite(v):
    """`v` when it is a finite number, else None."""
    return v if isinstance(v, (int, float)) and math.isfinite(v) else None


def ips(r, name):
    """Images per second of column `name`, None when not measured (or not a finite number)."""
    d = r.get(name)
    return None if d is None or "error" in d else finite(d.get("images_per_sec"))


def mem(r, name):
    """Peak memory (MiB) of column `name`: the project's pool, PyTorch's allocator, or nvidia-smi."""
    d = r.get(name) or {}
    for k in ("device_pool_peak_mib", "peak_cuda_mib", "nvidia_smi_peak_mib"):
        if d.get(k) is not None and d.get(k) == d.get(k):
            return d[k]
    return None


def best_f32(r):
    """PyTorch's best default-f32 layout (TF32 convolutions allowed): (name, img/s), or (None, None)."""
    measured = [(v, n) for n in ("f32", "f32-cl") if (v := ips(r, n)) is not None]
    if not measured:
        return None, None
    v, n = max(measured)
    return n, v


def main():
    rows = load(sys.argv[1])
    print("| configuration | project f32 | project TF32 | project bf16 | PyTorch f32 no-TF32 CL | PyTorch f32 NCHW "
          "| PyTorch f32 CL | PyTorch bf16 CL | f32 ratio (vs no-TF32 CL) | TF32 ratio | bf16 ratio | peak MiB project / PyTorch "
          "| bf16 peak MiB project / PyTorch |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    def order(kv):
        arch, mode, batch, size = kv[0]
        return (str(arch), mode != "train", str(mode), batch or 0, size or 0)

    for (arch, mode, batch, size), r in sorted(rows.items(), key=order):
        pf, pt, pb = ips(r, "project-f32"), ips(r, "project-tf32"), ips(r, "project-bf16")
        strict, f32, cl, bf16 = (ips(r, v) for v in ("f32-strict-cl", "f32", "f32-cl", "bf16-cl"))
        best_name, best = best_f32(r)
        ratio_f32 = f"{pf / strict:.2f}x" if pf and strict else "-"
        ratio_tf32 = f"{pt / best:.2f}x" if pt and best else "-"
        ratio_bf16 = f"{pb / bf16:.2f}x" if pb and bf16 else "-"
        memory = f"{fmt(mem(r, 'project-tf32') or mem(r, 'project-f32'))} / {fmt(mem(r, best_name))}"
        memory_bf16 = f"{fmt(mem(r, 'project-bf16'))} / {fmt(mem(r, 'bf16-cl'))}"
        print(f"| {arch} {mode} b{batch} {size}x{size} | {fmt(pf)} | {fmt(pt)} | {fmt(pb)} | {fmt(strict)} "
              f"| {fmt(f32)} | {fmt(cl)} | {fmt(bf16)} | {ratio_f32} | {ratio_tf32} | {ratio_bf16} | {memory} "
              f"| {memory_bf16} |")
    print()
    print("img/s, median step; CL = channels-last; ratios are project / PyTorch: f32 against PyTorch's f32 with "
          "TF32 off (channels-last only), TF32 against PyTorch's best default-f32 layout (the issue's ratio), bf16 "
          "against bf16 autocast (see scripts/bench_table.py).")
    def section(prefix, title, columns):
        """The configurations with a row named `prefix...`, after a table's title and header."""
        chosen = [(k, r) for k, r in sorted(rows.items(), key=order) if any(n.startswith(prefix) for n in r)]
        if chosen:
            print()
            print(title)
            print()
            print("| configuration | " + " | ".join(columns) + " |")
            print("|---" * (len(columns) + 1) + "|")
        return chosen

    ab = section("autograd", "Training steps on the taped executor (the project's default on CUDA, the columns "
                 "above) against candle's autograd (`--autograd`), img/s:",
                 ["TF32 taped", "TF32 autograd", "taped / autograd", "bf16 taped", "bf16 autograd",
                  "taped / autograd", "peak MiB TF32 taped / autograd"])
    for (arch, mode, batch, size), r in ab:
        tt, ta = ips(r, "project-tf32"), ips(r, "autograd-tf32")
        bt, ba = ips(r, "project-bf16"), ips(r, "autograd-bf16")
        gain_t = f"{tt / ta:.2f}x" if tt and ta else "-"
        gain_b = f"{bt / ba:.2f}x" if bt and ba else "-"
        print(f"| {arch} {mode} b{batch} {size}x{size} | {fmt(tt)} | {fmt(ta)} | {gain_t} | {fmt(bt)} | {fmt(ba)} "
              f"| {gain_b} | {fmt(mem(r, 'project-tf32'))} / {fmt(mem(r, 'autograd-tf32'))} |")
    settings = section("setting:", "The TF32 training step with one setting changed (bench-more) against the "
                       "default, measured in the same call, img/s:",
                       ["setting changed", "img/s", "default img/s", "changed / default",
                        "peak MiB changed / default"])
    for (arch, mode, batch, size), r in settings:
        base = ips(r, "project-tf32")
        for n in sorted(n for n in r if n.startswith("setting:")):
            v = ips(r, n)
            gain = f"{v / base:.2f}x" if v and base else "-"
            print(f"| {arch} {mode} b{batch} {size}x{size} | {SETTINGS.get(n[8:], n[8:])} | {fmt(v)} | {fmt(base)} "
                  f"| {gain} | {fmt(mem(r, n))} / {fmt(mem(r, 'project-tf32'))} |")


# What each bench-more setting changes, by the suffix of its row's name.
SETTINGS = {
    "pool-released": "freed memory released at every sync (LT_CUDA_RELEASE_FREED=1)",
    "sgd-tensor-ops": "SGD's tensor ops, not its kernel (LT_SGD_TENSOR_OPS=1)",
    "bn-spatial": "cuDNN's spatial batch norm, not persistent (LT_CUDNN_BN_SPATIAL=1)",
}

# Issue #11's bars on the benchmark: (arch, mode, batch, size, the least TF32 ratio).
BARS = [("resnet32", "train", 128, 32, 0.8), ("resnet32", "eval", 128, 32, 1.0), ("resnet50", "train", 256, 224, 0.8)]


def verdict(rows):
    """Issue #11's "done when" on the benchmark, one tab-separated line per bar: PASS, FAIL or
    UNMEASURED, the bar, what was measured. Speed: the project's TF32 convolutions (PyTorch's
    default f32 math) against PyTorch's best default-f32 layout; memory: the project's peak against
    that PyTorch variant's; bf16 against autocast, which the issue compares without a bar (INFO)."""
    for arch, mode, batch, size, bar in BARS:
        r = rows.get((arch, mode, batch, size), {})
        config = f"{arch} {mode} b{batch} {size}x{size}"
        pt = ips(r, "project-tf32")
        name, best = best_f32(r)
        if pt is not None and best:
            ratio = pt / best
            print(f"{'PASS' if ratio >= bar else 'FAIL'}\t{config}: TF32 ratio >= {bar}\t{ratio:.2f}x "
                  f"({pt:,.0f} img/s against PyTorch {name} {best:,.0f})")
        else:
            print(f"UNMEASURED\t{config}: TF32 ratio >= {bar}\tproject {fmt(pt)}, PyTorch {fmt(best)} img/s")
        # Like with like: the project's memory pool against PyTorch's allocator (nvidia-smi's
        # figure includes the CUDA context, which neither counts).
        pm = finite((r.get("project-tf32") or {}).get("device_pool_peak_mib"))
        tm = finite((r.get(name) or {}).get("peak_cuda_mib")) if name else None
        if pm is not None and tm is not None:
            print(f"{'PASS' if pm <= tm else 'FAIL'}\t{config}: peak memory <= PyTorch's\t{pm:,.0f} MiB against "
                  f"{tm:,.0f} MiB")
        else:
            print(f"UNMEASURED\t{config}: peak memory <= PyTorch's\tproject {fmt(pm)}, PyTorch {fmt(tm)} MiB")
        pb, tb = ips(r, "project-bf16"), ips(r, "bf16-cl")
        result = f"{pb / tb:.2f}x ({pb:,.0f} against {tb:,.0f} img/s)" if pb is not None and tb else \
            f"project {fmt(pb)}, PyTorch {fmt(tb)} img/s"
        print(f"INFO\t{config}: bf16 against PyTorch's autocast\t{result}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--verdict"]:
        # Without a bench.jsonl (the benchmark did not run), every bar is unmeasured.
        verdict(load(sys.argv[2]) if os.path.exists(sys.argv[2]) else {})
    else:
        main()
