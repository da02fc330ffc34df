//! `cargo xtask bench`: throughput and memory of the project's ops against stock candle and
//! PyTorch (when `torch` is importable) on the same machine in the same run, plus data loading
//! and stage 2. Each configuration runs in its own process (`lt bench ...`,
//! `scripts/bench_torch.py`) so that its peak memory is its own.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::Value;

mod report;
use report::{f, header, markdown};

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

/// JPEGs `lt bench loader` generates for the ImageNet-size loader measurement.
const LOADER_JPEGS: &str = "512";

/// The loader and stage-2 measurements (CPU): the loader on CIFAR-size images, and on generated
/// ImageNet-size JPEGs with all `threads` as workers, against torchvision's `DataLoader` on the
/// same files when `py` has it.
fn other_benchmarks(
    lt: &Path,
    py: Option<&Path>,
    root: &Path,
    dir: &Path,
    threads: usize,
    imagenet_retrain: bool,
) -> Result<Vec<Value>> {
    eprintln!("bench: loader");
    let mut extra = vec![run_json(Command::new(lt).args(["bench", "loader"]))?];
    eprintln!("bench: loader, ImageNet-size JPEGs, {threads} workers");
    let jpegs = dir.join("loader-jpegs");
    let workers = threads.to_string();
    let common = ["--workers", workers.as_str(), "--batches", "40"];
    let mut ours = Command::new(lt);
    ours.args(["bench", "loader", "--generate-jpegs", LOADER_JPEGS])
        .args(common)
        .arg("--data-root")
        .arg(&jpegs);
    extra.push(run_json(&mut ours)?);
    if let Some(py) = py {
        let mut torch = Command::new(py);
        torch.arg(root.join("scripts/bench_torch_loader.py")).args(common).arg("--folder").arg(&jpegs);
        match run_json(&mut torch) {
            Ok(v) => extra.push(v),
            Err(e) => eprintln!("  pytorch loader: {e}"),
        }
    }
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
        None => crate::build_lt(root, crate::lt_features(&a.device), a.isa.is_none())?,
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
        other_benchmarks(&lt, py.as_deref(), root, &out.join("features"), threads, !a.no_imagenet_retrain)?
    };
    let md = markdown(&rows, &extra, header(threads, &a.device, a.rounds, a.isa));
    print!("{md}");
    std::fs::create_dir_all(&out)?;
    crate::write_atomic(
        &out.join("bench.json"),
        serde_json::to_string_pretty(&serde_json::json!({"backbones": rows, "other": extra}))?,
    )?;
    crate::write_atomic(&out.join("bench.md"), &md)?;
    eprintln!("wrote {} and bench.json", out.join("bench.md").display());
    Ok(())
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
