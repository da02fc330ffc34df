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
    /// Interleaved rounds per configuration (project, PyTorch NCHW, PyTorch channels-last, then
    /// again); each implementation's best round is reported, the least disturbed by other work
    /// on a shared machine.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Only the backbone configurations whose label has each of these words (e.g. `resnet50
    /// train`, `b1`); the loader and stage 2 are skipped.
    #[arg(long)]
    pub only: Option<String>,
    /// Skip ResNet-50 (slow on CPU).
    #[arg(long)]
    pub quick: bool,
    /// Skip the ImageNet-size stage-2 benchmark (writes a 2.9 GB file).
    #[arg(long)]
    pub no_imagenet_retrain: bool,
    /// Hold both sides to one instruction set, to measure on this CPU what a CPU without the
    /// wider ones runs.
    #[arg(long, value_enum)]
    pub isa: Option<IsaLimit>,
    /// Where results go (bench.json, bench.md).
    #[arg(long, default_value = "runs/bench")]
    pub out: PathBuf,
}

/// An instruction set both sides are held to (`--isa`).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum IsaLimit {
    /// AVX2 + FMA, no AVX-512: the project's AVX2 kernels (`LT_KERNELS=avx2`) in a build without
    /// `avx512-gemm`; PyTorch with oneDNN, ATen and MKL held to AVX2.
    Avx2,
}

impl IsaLimit {
    /// The environment of the project's runs.
    fn lt_env(self) -> &'static [(&'static str, &'static str)] {
        match self {
            IsaLimit::Avx2 => &[("LT_KERNELS", "avx2")],
        }
    }

    /// The environment of PyTorch's runs.
    fn torch_env(self) -> &'static [(&'static str, &'static str)] {
        match self {
            IsaLimit::Avx2 => &[
                ("ONEDNN_MAX_CPU_ISA", "AVX2"),
                ("ATEN_CPU_CAPABILITY", "avx2"),
                ("MKL_ENABLE_INSTRUCTIONS", "AVX2"),
            ],
        }
    }

    /// How the report's heading describes it: the environment of each side, as set.
    fn describe(self) -> String {
        use clap::ValueEnum;
        let name = self.to_possible_value().map_or_else(String::new, |v| v.get_name().to_string());
        let env = |vars: &[(&str, &str)]| {
            vars.iter().map(|(k, v)| format!("`{k}={v}`")).collect::<Vec<_>>().join(", ")
        };
        format!(
            "**Held to {name}** (`--isa {name}`): the project with {} in a build without `avx512-gemm`; PyTorch with {}. The CPU's caches and memory are this machine's, not those of a machine without the wider instruction sets.",
            env(self.lt_env()),
            env(self.torch_env())
        )
    }
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
    /// The row label, e.g. `resnet32 train b128 32x32`.
    fn label(&self) -> String {
        format!("{} {} b{} {}x{}", self.arch, self.mode, self.batch, self.size, self.size)
    }

    /// The `--classes`, `--batch` and `--size` flags shared by both benchmark programs.
    fn shape_args(&self) -> [String; 6] {
        let [classes, batch, size] = [self.classes, self.batch, self.size].map(|v| v.to_string());
        ["--classes".into(), classes, "--batch".into(), batch, "--size".into(), size]
    }
}

/// The backbone configurations of a run (`quick`: ResNet-32 only); batch 1 gives the latency of
/// one image.
fn configs(quick: bool, cuda: bool) -> Vec<Config> {
    let mut configs = vec![
        Config { arch: "resnet32", classes: 10, batch: 128, size: 32, mode: "train", candle: true },
        Config { arch: "resnet32", classes: 10, batch: 128, size: 32, mode: "eval", candle: true },
        Config { arch: "resnet32", classes: 10, batch: 1, size: 32, mode: "eval", candle: false },
    ];
    if !quick {
        let batch = if cuda { 64 } else { 32 };
        for (mode, candle) in [("train", cuda), ("eval", true)] {
            configs.push(Config { arch: "resnet50", classes: 1000, batch, size: 224, mode, candle });
        }
        configs.push(Config {
            arch: "resnet50",
            classes: 1000,
            batch: 1,
            size: 224,
            mode: "eval",
            candle: false,
        });
    }
    configs
}

/// One PyTorch layout of the reference: its key in a row, whether it is channels-last, its row
/// name and its layout's name.
struct TorchLayout {
    key: &'static str,
    channels_last: bool,
    name: &'static str,
    layout: &'static str,
}

/// The PyTorch layouts every row measures.
const TORCH: [TorchLayout; 2] = [
    TorchLayout { key: "pytorch", channels_last: false, name: "PyTorch", layout: "NCHW" },
    TorchLayout {
        key: "pytorch_channels_last",
        channels_last: true,
        name: "PyTorch channels-last",
        layout: "channels-last",
    },
];

/// Keeps the faster of two measurements of one implementation.
fn keep_best(group: &mut serde_json::Map<String, Value>, key: &str, v: Value) {
    let ips = |v: &Value| f(v, "images_per_sec").unwrap_or(0.0);
    if group.get(key).is_none_or(|old| ips(&v) > ips(old)) {
        group.insert(key.into(), v);
    }
}

/// What one backbone configuration measures: the project, stock candle, PyTorch (NCHW and
/// channels-last) in the same run.
struct Backbones<'a> {
    root: &'a Path,
    lt: &'a Path,
    py: Option<&'a Path>,
    device: &'a str,
    threads: usize,
    isa: Option<IsaLimit>,
}

impl Backbones<'_> {
    fn lt_command(&self, c: &Config, backend: &str, steps: usize, warmup: usize) -> Command {
        let mut cmd = Command::new(self.lt);
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
            self.device,
        ])
        .args(c.shape_args())
        .args(["--steps", &steps.to_string(), "--warmup", &warmup.to_string()]);
        cmd.envs(self.isa.map_or(&[][..], IsaLimit::lt_env).iter().copied());
        cmd
    }

    fn torch_command(
        &self,
        py: &Path,
        c: &Config,
        steps: usize,
        warmup: usize,
        channels_last: bool,
    ) -> Command {
        let cuda = self.device.starts_with("cuda");
        let mut cmd = Command::new(py);
        cmd.arg(self.root.join("scripts/bench_torch.py"))
            .args(["--arch", c.arch, "--mode", c.mode, "--device", if cuda { "cuda" } else { "cpu" }])
            .args(c.shape_args())
            .args(["--steps", &steps.to_string(), "--warmup", &warmup.to_string()])
            .args(["--threads", &self.threads.to_string()]);
        if channels_last {
            cmd.arg("--channels-last");
        }
        cmd.envs(self.isa.map_or(&[][..], IsaLimit::torch_env).iter().copied());
        cmd
    }

    /// One table row: every implementation on configuration `c`, the best of `rounds`
    /// interleaved rounds each (stock candle once).
    fn measure(&self, c: &Config, steps: usize, rounds: usize) -> Result<Value> {
        let cpu_resnet50 = c.arch == "resnet50" && !self.device.starts_with("cuda") && c.batch > 1;
        let (steps, warmup) = if cpu_resnet50 { (2.min(steps), 1) } else { (steps, 2) };
        // One image per step: more steps for a stable latency.
        let steps = if c.batch == 1 { steps.max(20) } else { steps };
        let label = c.label();
        let mut group = serde_json::Map::new();
        group.insert("config".into(), label.clone().into());
        for round in 1..=rounds.max(1) {
            eprintln!("bench: {label} (round {round} of {rounds})");
            keep_best(&mut group, "project", run_json(&mut self.lt_command(c, "fast", steps, warmup))?);
            if let Some(py) = self.py {
                for t in &TORCH {
                    match run_json(&mut self.torch_command(py, c, steps, warmup, t.channels_last)) {
                        Ok(v) => keep_best(&mut group, t.key, v),
                        Err(e) => eprintln!("  pytorch: {e}"),
                    }
                }
            }
        }
        if c.candle {
            // Stock candle is slow on the CPU: fewer steps.
            let (s, w) = if c.arch == "resnet50" || c.mode == "train" { (1, 0) } else { (2, 1) };
            match run_json(&mut self.lt_command(c, "candle", s, w)) {
                Ok(v) => drop(group.insert("candle".into(), v)),
                Err(e) => eprintln!("  stock candle: {e}"),
            }
        }
        Ok(Value::Object(group))
    }
}

/// The loader and stage-2 measurements (CPU).
fn other_benchmarks(lt: &Path, dir: &Path, imagenet_retrain: bool) -> Result<Vec<Value>> {
    eprintln!("bench: loader");
    let mut extra = vec![run_json(Command::new(lt).args(["bench", "loader"]))?];
    for m in ["crt", "srepr"] {
        eprintln!("bench: stage 2 {m}, CIFAR size, 30 epochs");
        let args = ["bench", "retrain", "--size", "cifar", "--method", m, "--epochs", "30", "--dir"];
        extra.push(run_json(Command::new(lt).args(args).arg(dir))?);
    }
    if imagenet_retrain {
        eprintln!("bench: stage 2 srepr, ImageNet-LT size, 1 epoch (generates a 2.9 GB f16 file once)");
        let args = ["bench", "retrain", "--size", "imagenet", "--method", "srepr", "--epochs", "1", "--dir"];
        extra.push(run_json(Command::new(lt).args(args).arg(dir))?);
    }
    Ok(extra)
}

/// Runs the benchmarks and prints the report.
pub fn run(root: &Path, a: &BenchArgs) -> Result<()> {
    let cuda = a.device.starts_with("cuda");
    if cuda && a.isa.is_some() {
        bail!("--isa holds the CPU's instruction set; it has no meaning with --device {}", a.device);
    }
    let lt = match &a.lt {
        Some(p) => p.clone(),
        None => crate::build_lt(root, if cuda { &["cuda", "cudnn"] } else { &[] }, a.isa.is_none())?,
    };
    let py = torch_python(a);
    if py.is_none() {
        eprintln!("note: torch is not importable; PyTorch columns are skipped (pass --python or set LT_BENCH_PYTHON)");
    }
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let bench = Backbones { root, lt: &lt, py: py.as_deref(), device: &a.device, threads, isa: a.isa };
    let all = configs(a.quick, cuda);
    let wanted = |c: &&Config| {
        let label = c.label();
        a.only.as_deref().is_none_or(|o| o.split_whitespace().all(|w| label.split(' ').any(|l| l == w)))
    };
    if let (Some(o), false) = (&a.only, all.iter().any(|c| wanted(&c))) {
        let labels: Vec<String> = all.iter().map(Config::label).collect();
        bail!("--only {o:?} matches no configuration; the labels are: {}", labels.join(", "));
    }
    let rows: Vec<Value> =
        all.iter().filter(wanted).map(|c| bench.measure(c, a.steps, a.rounds)).collect::<Result<_>>()?;
    let out = root.join(&a.out);
    let extra = if cuda || a.only.is_some() {
        Vec::new()
    } else {
        other_benchmarks(&lt, &out.join("features"), !a.no_imagenet_retrain)?
    };
    let md = markdown(&rows, &extra, header(threads, &a.device, a.rounds, a.isa));
    print!("{md}");
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

/// The report's heading: device, threads, CPU model and the method.
fn header(threads: usize, device: &str, rounds: usize, isa: Option<IsaLimit>) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let isa = isa.map_or(String::new(), |i| format!("{}\n\n", i.describe()));
    format!(
        "# Benchmarks ({device}, {threads} threads)\n\nCPU: {cpu}. Each implementation's best of {rounds} interleaved round(s); the kernels column gives the project's kernel set, the `gemm` crate's and the CPU features they looked at, and PyTorch's CPU capability.\n\n{isa}"
    )
}

/// Per configuration: the project against PyTorch's faster layout, throughput and peak memory.
fn summary(rows: &[Value]) -> String {
    let mut s = String::from(
        "\n| configuration | project images/s | best PyTorch images/s (layout) | project / best PyTorch | peak RSS project / that PyTorch (MiB) |\n|---|---|---|---|---|\n",
    );
    for r in rows {
        let ips = |k: &str| r.get(k).and_then(|v| f(v, "images_per_sec"));
        let best = TORCH
            .iter()
            .filter_map(|t| ips(t.key).map(|v| (t.key, t.layout, v)))
            .max_by(|a, b| a.2.total_cmp(&b.2));
        let (Some(p), Some((key, layout, t))) = (ips("project"), best) else { continue };
        let rss = |k: &str| f(&r[k], "peak_rss_mib").unwrap_or(f64::NAN);
        s.push_str(&format!(
            "| {} | {p:.1} | {t:.1} ({layout}) | {:.2}x | {:.0} / {:.0} |\n",
            r["config"].as_str().unwrap_or(""),
            p / t,
            rss("project"),
            rss(key)
        ));
    }
    s
}

fn markdown(rows: &[Value], extra: &[Value], header: String) -> String {
    let mut s = header;
    s.push_str("| configuration | implementation | images/s | step (ms) | peak RSS (MiB) | vs project | kernels |\n|---|---|---|---|---|---|---|\n");
    for r in rows {
        let cfg = r["config"].as_str().unwrap_or("");
        let proj = f(&r["project"], "images_per_sec");
        let ours = [("project", "project ops (fused)"), ("candle", "stock candle")];
        for (key, name) in ours.into_iter().chain(TORCH.iter().map(|t| (t.key, t.name))) {
            let Some(v) = r.get(key) else { continue };
            let ips = f(v, "images_per_sec");
            let ratio = match (proj, ips) {
                (Some(p), Some(i)) if key != "project" => format!("project is {:.2}x", p / i),
                _ => "-".into(),
            };
            let gemm = v["gemm"].as_str().map_or(String::new(), |g| format!(", gemm {g}"));
            let kernels = match (v["kernels"].as_str(), v["cpu_features"].as_array()) {
                (Some(k), Some(feats)) => {
                    format!(
                        "{k}{gemm} ({})",
                        feats.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(" ")
                    )
                }
                (Some(k), None) => format!("{k}{gemm}"),
                _ => match (v["torch"].as_str(), v["cpu_capability"].as_str()) {
                    (Some(t), Some(c)) => format!("torch {t} ({c})"),
                    (Some(t), None) => format!("torch {t}"),
                    _ => "-".into(),
                },
            };
            s.push_str(&format!(
                "| {cfg} | {name} | {:.1} | {:.2} | {:.0} | {ratio} | {kernels} |\n",
                ips.unwrap_or(f64::NAN),
                1000.0 * f(v, "median_step_seconds").unwrap_or(f64::NAN),
                f(v, "peak_rss_mib").unwrap_or(f64::NAN)
            ));
        }
    }
    s.push_str(&summary(rows));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_isa_heading_names_every_variable_each_side_runs_with() {
        let d = IsaLimit::Avx2.describe();
        assert!(d.starts_with("**Held to avx2** (`--isa avx2`)"), "{d}");
        for (k, v) in IsaLimit::Avx2.lt_env().iter().chain(IsaLimit::Avx2.torch_env()) {
            assert!(d.contains(&format!("`{k}={v}`")), "{d} lacks {k}={v}");
        }
    }
}
