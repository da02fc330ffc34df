//! `cargo xtask bench`: throughput and memory of the project's ops against stock candle and
//! PyTorch (when `torch` is importable) on the same machine in the same run, plus data loading
//! and stage 2. Each configuration runs in its own process (`lt bench ...`,
//! `scripts/bench_torch.py`) so that its peak memory is its own.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// Benchmark options.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Device: cpu, or cuda (then the GPU configurations of the fast-ops issue).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Python with torch and torchvision for the reference (default: $LT_BENCH_PYTHON, python3).
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// Use this `lt` binary instead of building one.
    #[arg(long)]
    pub lt: Option<PathBuf>,
    /// Timed steps per backbone configuration.
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Skip ResNet-50 (slow on CPU).
    #[arg(long)]
    pub quick: bool,
    /// Skip the ImageNet-size stage-2 benchmark (writes a 2.9 GB file).
    #[arg(long)]
    pub no_imagenet_retrain: bool,
    /// Where results go (bench.json, bench.md).
    #[arg(long, default_value = "runs/bench")]
    pub out: PathBuf,
}

fn run_json(cmd: &mut Command) -> Result<Value> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or(""));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().rev().find(|l| l.trim_start().starts_with('{')).context("no JSON output")?;
    Ok(serde_json::from_str(line)?)
}

fn torch_python(a: &BenchArgs) -> Option<PathBuf> {
    let py = a
        .python
        .clone()
        .or_else(|| std::env::var_os("LT_BENCH_PYTHON").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("python3"));
    let ok = Command::new(&py)
        .args(["-c", "import torch, torchvision"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    ok.then_some(py)
}

struct Config {
    arch: &'static str,
    classes: usize,
    batch: usize,
    size: usize,
    mode: &'static str,
    candle: bool,
}

impl Config {
    /// The `--classes`, `--batch` and `--size` flags shared by both benchmark programs.
    fn shape_args(&self) -> [String; 6] {
        let [classes, batch, size] = [self.classes, self.batch, self.size].map(|v| v.to_string());
        ["--classes".into(), classes, "--batch".into(), batch, "--size".into(), size]
    }
}

/// Runs the benchmarks and prints the report.
pub fn run(root: &Path, a: &BenchArgs) -> Result<()> {
    let cuda = a.device.starts_with("cuda");
    let lt = match &a.lt {
        Some(p) => p.clone(),
        None => crate::build_lt(root, if cuda { &["cuda", "cudnn"] } else { &[] })?,
    };
    let py = torch_python(a);
    if py.is_none() {
        eprintln!("note: torch is not importable; PyTorch columns are skipped (pass --python or set LT_BENCH_PYTHON)");
    }
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mut configs = vec![
        Config { arch: "resnet32", classes: 10, batch: 128, size: 32, mode: "train", candle: true },
        Config { arch: "resnet32", classes: 10, batch: 128, size: 32, mode: "eval", candle: true },
    ];
    if !a.quick {
        let b = if cuda { 64 } else { 32 };
        configs.push(Config {
            arch: "resnet50",
            classes: 1000,
            batch: b,
            size: 224,
            mode: "train",
            candle: cuda,
        });
        configs.push(Config {
            arch: "resnet50",
            classes: 1000,
            batch: b,
            size: 224,
            mode: "eval",
            candle: true,
        });
    }
    let mut rows: Vec<Value> = Vec::new();
    for c in &configs {
        let steps = if c.arch == "resnet50" && !cuda { 2.min(a.steps) } else { a.steps };
        let warmup = if c.arch == "resnet50" && !cuda { 1 } else { 2 };
        let base = |backend: &str, steps: usize, warmup: usize| {
            let mut cmd = Command::new(&lt);
            cmd.args([
                "bench",
                "backbone",
                "--arch",
                c.arch,
                "--mode",
                c.mode,
                "--backend",
                backend,
                "--device",
                &a.device,
            ])
            .args(c.shape_args())
            .args(["--steps", &steps.to_string(), "--warmup", &warmup.to_string()]);
            cmd
        };
        let label = format!("{} {} b{} {}x{}", c.arch, c.mode, c.batch, c.size, c.size);
        eprintln!("bench: {label}");
        let mut group = serde_json::Map::new();
        group.insert("config".into(), label.clone().into());
        group.insert("project".into(), run_json(&mut base("fast", steps, warmup))?);
        if c.candle {
            // Stock candle is slow on the CPU: fewer steps.
            let (s, w) = if c.arch == "resnet50" || c.mode == "train" { (1, 0) } else { (2, 1) };
            match run_json(&mut base("candle", s, w)) {
                Ok(v) => {
                    group.insert("candle".into(), v);
                }
                Err(e) => eprintln!("  stock candle: {e}"),
            }
        }
        if let Some(py) = &py {
            for cl in [false, true] {
                let mut cmd = Command::new(py);
                cmd.arg(root.join("scripts/bench_torch.py"))
                    .args(["--arch", c.arch, "--mode", c.mode, "--device", if cuda { "cuda" } else { "cpu" }])
                    .args(c.shape_args())
                    .args([
                        "--steps",
                        &steps.to_string(),
                        "--warmup",
                        &warmup.to_string(),
                        "--threads",
                        &threads.to_string(),
                    ]);
                if cl {
                    cmd.arg("--channels-last");
                }
                match run_json(&mut cmd) {
                    Ok(v) => {
                        group.insert(if cl { "pytorch_channels_last".into() } else { "pytorch".into() }, v);
                    }
                    Err(e) => eprintln!("  pytorch: {e}"),
                }
            }
        }
        rows.push(Value::Object(group));
    }
    let mut extra = Vec::new();
    if !cuda {
        eprintln!("bench: loader");
        extra.push(run_json(Command::new(&lt).args(["bench", "loader"]))?);
        let dir = root.join(&a.out).join("features");
        for m in ["crt", "srepr"] {
            eprintln!("bench: stage 2 {m}, CIFAR size, 30 epochs");
            extra.push(run_json(
                Command::new(&lt)
                    .args(["bench", "retrain", "--size", "cifar", "--method", m, "--epochs", "30", "--dir"])
                    .arg(&dir),
            )?);
        }
        if !a.no_imagenet_retrain {
            eprintln!("bench: stage 2 srepr, ImageNet-LT size, 1 epoch (generates a 2.9 GB f16 file once)");
            extra.push(run_json(
                Command::new(&lt)
                    .args([
                        "bench", "retrain", "--size", "imagenet", "--method", "srepr", "--epochs", "1",
                        "--dir",
                    ])
                    .arg(&dir),
            )?);
        }
    }
    let md = markdown(&rows, &extra, threads, &a.device);
    print!("{md}");
    let out = root.join(&a.out);
    std::fs::create_dir_all(&out)?;
    std::fs::write(
        out.join("bench.json"),
        serde_json::to_string_pretty(&serde_json::json!({"backbones": rows, "other": extra}))?,
    )?;
    std::fs::write(out.join("bench.md"), &md)?;
    eprintln!("wrote {} and bench.json", out.join("bench.md").display());
    Ok(())
}

fn f(v: &Value, k: &str) -> Option<f64> {
    v.get(k).and_then(|x| x.as_f64())
}

fn markdown(rows: &[Value], extra: &[Value], threads: usize, device: &str) -> String {
    let mut s = format!("# Benchmarks ({device}, {threads} threads)\n\n");
    s.push_str("| configuration | implementation | images/s | step (s) | peak RSS (MiB) | vs project |\n|---|---|---|---|---|---|\n");
    for r in rows {
        let cfg = r["config"].as_str().unwrap_or("");
        let proj = f(&r["project"], "images_per_sec");
        for (key, name) in [
            ("project", "project ops (fused)"),
            ("candle", "stock candle"),
            ("pytorch", "PyTorch"),
            ("pytorch_channels_last", "PyTorch channels-last"),
        ] {
            let Some(v) = r.get(key) else { continue };
            let ips = f(v, "images_per_sec");
            let ratio = match (proj, ips) {
                (Some(p), Some(i)) if key != "project" => format!("project is {:.2}x", p / i),
                _ => "-".into(),
            };
            s.push_str(&format!(
                "| {cfg} | {name} | {:.1} | {:.3} | {:.0} | {ratio} |\n",
                ips.unwrap_or(f64::NAN),
                f(v, "median_step_seconds").unwrap_or(f64::NAN),
                f(v, "peak_rss_mib").unwrap_or(f64::NAN)
            ));
        }
    }
    for e in extra {
        match e["bench"].as_str() {
            Some("loader") => s.push_str(&format!(
                "\nLoader ({}, batch {}, {} workers): {:.0} images/s.\n",
                e["augmentation"].as_str().unwrap_or(""),
                e["batch"],
                e["workers"],
                f(e, "images_per_sec").unwrap_or(0.0)
            )),
            Some("retrain") => s.push_str(&format!(
                "\nStage 2 `{}` at {} size ({} x {}, {} classes, M = {}, {}): {:.2} s per epoch, peak RSS {:.0} MiB (file {:.0} MiB, memory-mapped; anonymous memory {:.0} MiB).\n",
                e["method"].as_str().unwrap_or(""),
                e["size"].as_str().unwrap_or(""),
                e["samples"],
                e["dim"],
                e["classes"],
                e["members"],
                e["dtype"].as_str().unwrap_or(""),
                f(e, "seconds_per_epoch").unwrap_or(0.0),
                f(e, "peak_rss_mib").unwrap_or(0.0),
                f(e, "file_mib").unwrap_or(0.0),
                f(e, "rss_anon_mib").unwrap_or(0.0)
            )),
            _ => {}
        }
    }
    s
}
