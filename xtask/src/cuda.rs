//! `cargo xtask cuda-build`: the CUDA `lt` binary, built here for a GPU machine that has the
//! CUDA driver but no Rust toolchain and no network.
//!
//! 1. A virtual environment (`.venv-cuda`) gets the CUDA 13.0 toolkit pieces from PyPI: nvcc and
//!    its headers and CCCL (candle's kernels are compiled to PTX for `CUDA_COMPUTE_CAP`), and the
//!    libraries candle links against (cuBLAS, cuRAND, NVRTC, cuDNN).
//! 2. The driver library is not on PyPI, so a link stub `libcuda.so` (soname `libcuda.so.1`)
//!    exporting every driver entry point cudarc declares is generated and compiled; at run time
//!    the GPU machine's real driver is loaded instead.
//! 3. `lt` is built with `--features cuda,cudnn` into `target/cuda` and stripped; a smoke test
//!    runs it here with the driver stubbed (its CPU path passes part of `lt selftest`, and
//!    `--device cuda` fails cleanly); it is compressed with xz into `dist/cuda/lt.xz` (the GPU
//!    machine unpacks it with Python's `lzma`); the Fashion-MNIST files of the GPU check are
//!    copied to `dist/cuda/data/fashion-mnist/`. Carry the working tree and `dist/cuda`
//!    (git-ignored) to the GPU machine and run `bash scripts/gpu_check.sh` from the repository
//!    root, then `GPU_CHECK_STEPS=more bash scripts/gpu_check.sh` (the check's second call).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// CUDA build options.
#[derive(clap::Args, Debug, Clone)]
pub struct CudaBuildArgs {
    /// Compute capability of the target GPU (90: H100/H200).
    #[arg(long, default_value = "90")]
    pub compute_cap: String,
    /// Python used to create the virtual environment.
    #[arg(long, default_value = "python3")]
    pub python: PathBuf,
    /// The virtual environment holding the toolkit.
    #[arg(long, default_value = ".venv-cuda")]
    pub venv: PathBuf,
    /// Skip `pip install` (the environment is ready).
    #[arg(long)]
    pub no_install: bool,
    /// Where the Fashion-MNIST files (`*-ubyte.gz`) of the GPU check are copied from.
    #[arg(long, default_value = "/usr/share/datasets/fashion-mnist")]
    pub fashion_mnist: PathBuf,
}

/// What may travel to the GPU machine besides the working tree.
const DIST_BUDGET: u64 = 64 << 20;

/// The Fashion-MNIST files of the GPU check's pipeline.
const FASHION_MNIST: [&str; 4] = [
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
];

/// The PyPI packages of the toolkit (CUDA 13.0, the newest release cudarc 0.19 knows).
pub const PACKAGES: [&str; 9] = [
    "nvidia-cuda-nvcc==13.0.*",
    "nvidia-nvvm==13.0.*",
    "nvidia-cuda-crt==13.0.*",
    "nvidia-cuda-cccl==13.0.*",
    "nvidia-cuda-runtime==13.0.*",
    "nvidia-cuda-nvrtc==13.0.*",
    "nvidia-cublas==13.0.*",
    "nvidia-curand==10.*",
    "nvidia-cudnn-cu13==9.*",
];

fn exec(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

fn site_packages(venv: &Path) -> Result<PathBuf> {
    let lib = venv.join("lib");
    for e in std::fs::read_dir(&lib).with_context(|| format!("reading {}", lib.display()))? {
        let p = e?.path().join("site-packages");
        if p.is_dir() {
            return Ok(p);
        }
    }
    bail!("no site-packages under {}", lib.display())
}

/// Every directory under `nvidia/` holding shared libraries.
fn lib_dirs(nvidia: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![nvidia.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        let mut has_so = false;
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n.to_string_lossy().contains(".so")) {
                has_so = true;
            }
        }
        if has_so {
            out.push(d);
        }
    }
    out.sort();
    out
}

/// Gives every `libX.so.N` an unversioned `libX.so` link (the linker's `-lX` wants one).
fn dev_links(dirs: &[PathBuf]) -> Result<()> {
    for d in dirs {
        for e in std::fs::read_dir(d)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some((stem, _)) = name.split_once(".so.") {
                let link = d.join(format!("{stem}.so"));
                if !link.exists() {
                    #[cfg(unix)]
                    std::os::unix::fs::symlink(&name, &link)?;
                }
            }
        }
    }
    Ok(())
}

/// The driver entry points cudarc declares (from its sources, found through `cargo metadata`).
fn driver_symbols(root: &Path) -> Result<Vec<String>> {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(root)
        .args(["metadata", "--format-version", "1", "--features", "lt-cli/cuda"])
        .output()?;
    if !out.status.success() {
        bail!("cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let manifest = meta["packages"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "cudarc"))
        .and_then(|p| p["manifest_path"].as_str())
        .context("cudarc is not in the dependency graph")?;
    let sys = Path::new(manifest).parent().expect("crate dir").join("src/driver/sys/mod.rs");
    let text = std::fs::read_to_string(&sys).with_context(|| format!("reading {}", sys.display()))?;
    let mut names: Vec<String> = text
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("fn cu"))
        .filter_map(|rest| rest.split('(').next())
        .map(|n| format!("cu{n}"))
        .collect();
    names.sort();
    names.dedup();
    if names.len() < 100 {
        bail!("found only {} driver symbols in {}", names.len(), sys.display());
    }
    Ok(names)
}

fn driver_stub(root: &Path, dir: &Path) -> Result<()> {
    let names = driver_symbols(root)?;
    std::fs::create_dir_all(dir)?;
    let c = dir.join("cuda_stub.c");
    let mut src = String::from(
        "/* Link stub of the CUDA driver API; the real libcuda.so.1 is loaded at run time. */\n",
    );
    for n in &names {
        src.push_str(&format!("int {n}(void) {{ return 999; }}\n"));
    }
    std::fs::write(&c, src)?;
    exec(
        Command::new("cc")
            .args(["-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o"])
            .arg(dir.join("libcuda.so"))
            .arg(&c),
    )?;
    eprintln!("driver link stub with {} entry points in {}", names.len(), dir.display());
    Ok(())
}

/// Runs the CUDA build.
pub fn run_build(root: &Path, a: &CudaBuildArgs) -> Result<PathBuf> {
    let venv = if a.venv.is_absolute() { a.venv.clone() } else { root.join(&a.venv) };
    if !a.no_install {
        if !venv.join("bin/pip").exists() {
            exec(Command::new(&a.python).args(["-m", "venv"]).arg(&venv))?;
        }
        exec(Command::new(venv.join("bin/pip")).args(["install", "--quiet"]).args(PACKAGES))?;
    }
    let nvidia = site_packages(&venv)?.join("nvidia");
    let cu = nvidia.join("cu13");
    let nvcc = cu.join("bin/nvcc");
    if !nvcc.exists() {
        bail!("{} is missing (pip install {})", nvcc.display(), PACKAGES.join(" "));
    }
    let stub_dir = root.join("target/cuda-stub");
    driver_stub(root, &stub_dir)?;
    let mut dirs = lib_dirs(&nvidia);
    dev_links(&dirs)?;
    dirs.insert(0, stub_dir.clone());
    let rustflags: String = dirs.iter().map(|d| format!("-L native={} ", d.display())).collect();
    let path = format!("{}:{}", cu.join("bin").display(), std::env::var("PATH").unwrap_or_default());
    let ld = dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(":");
    exec(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(root)
            .args(["build", "--release", "-p", "lt-cli", "--target-dir", "target/cuda", "--features"])
            .arg(crate::CUDA_FEATURES.join(","))
            .env("CUDA_COMPUTE_CAP", &a.compute_cap)
            .env("CUDA_ROOT", &cu)
            .env("CUDA_PATH", &cu)
            .env("PATH", path)
            .env("LD_LIBRARY_PATH", &ld)
            .env("RUSTFLAGS", rustflags),
    )?;
    let stripped = root.join("target/cuda/lt-stripped");
    std::fs::copy(root.join("target/cuda/release/lt"), &stripped)?;
    exec(Command::new("strip").arg(&stripped))?;
    let dist = root.join("dist/cuda");
    std::fs::create_dir_all(&dist)?;
    // Written again beside the new binary only (a build that stops half-way names no commit).
    let _ = std::fs::remove_file(dist.join(BUILD_FILE));
    // Only the compressed binary travels (an uncompressed one left from older builds would not fit).
    let _ = std::fs::remove_file(dist.join("lt"));
    let _ = std::fs::remove_file(dist.join("gpu_check.sh"));
    smoke(root, &stripped, &stub_dir, &ld)?;
    let xz = dist.join("lt.xz");
    compress(&stripped, &xz)?;
    std::fs::write(dist.join(BUILD_FILE), format!("{}\n", build_id(root)))?;
    copy_fashion_mnist(&a.fashion_mnist, &dist.join("data/fashion-mnist"))?;
    report(&stripped, &dist)?;
    Ok(xz)
}

/// The file in `dist/cuda` naming the tree the binary was built from (`scripts/gpu_check.sh`
/// prints it in its summary, so that a GPU's results name the commit they measured).
const BUILD_FILE: &str = "BUILD";

/// The commit of `root`'s checkout, with "+ uncommitted changes" when files differ from it
/// (tracked ones changed, or new ones git does not ignore); "unknown commit" without git.
fn build_id(root: &Path) -> String {
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git").arg("-C").arg(root).args(args).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    match (git(&["rev-parse", "--short=12", "HEAD"]), git(&["status", "--porcelain"])) {
        (Some(commit), Some(changes)) if changes.is_empty() => format!("commit {commit}"),
        (Some(commit), _) => format!("commit {commit} + uncommitted changes"),
        _ => "unknown commit".to_string(),
    }
}

/// The groups of `lt selftest` the smoke test runs on the CPU.
const SMOKE_GROUPS: &str = "golden-resnet32-fast,golden-resnet32-candle,taped,optimiser,repeatable,loader";

/// Runs the CUDA build `lt` here, with the driver stubbed (every entry point fails): its CPU path
/// must pass some of `lt selftest`'s groups (the libraries load, and the features `cuda` and
/// `cudnn` leave the CPU's results as they are), and asking for the GPU must fail with the
/// device's error, not a crash. `stub` is the driver stub's folder, `ld` the build's library
/// path (the stub's folder first).
fn smoke(root: &Path, lt: &Path, stub: &Path, ld: &str) -> Result<()> {
    let soname = stub.join("libcuda.so.1");
    if !soname.exists() {
        std::os::unix::fs::symlink("libcuda.so", &soname)?;
    }
    let run = |device: &str| {
        Command::new(lt)
            .current_dir(root)
            .args(["--plain", "selftest", "--device", device, "--only", SMOKE_GROUPS])
            .env("LD_LIBRARY_PATH", ld)
            .env_remove("RUST_BACKTRACE")
            .output()
            .with_context(|| format!("running {}", lt.display()))
    };
    let cpu = run("cpu")?;
    let out = String::from_utf8_lossy(&cpu.stdout);
    if !cpu.status.success() {
        bail!(
            "the CUDA build's CPU path failed `lt selftest --only {SMOKE_GROUPS}` ({}):\n{out}{}",
            cpu.status,
            String::from_utf8_lossy(&cpu.stderr)
        );
    }
    let gpu = run("cuda")?;
    let err = String::from_utf8_lossy(&gpu.stderr);
    if gpu.status.code() != Some(1) || !err.contains("opening cuda:0") {
        bail!("with the driver stubbed, `lt selftest --device cuda` should fail opening cuda:0; it ended {}:\n{err}", gpu.status);
    }
    let passed: Vec<&str> = out.lines().filter(|l| l.contains(" passed on cpu")).collect();
    eprintln!(
        "smoke test, the driver stubbed: {}; --device cuda fails opening the device",
        passed.join(", ")
    );
    Ok(())
}

/// `xz -6` of `src` into `dst` (through a temporary file, so that `dst` is whole or absent).
fn compress(src: &Path, dst: &Path) -> Result<()> {
    let tmp = dst.with_extension("xz.tmp");
    let file = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let status = Command::new("xz")
        .args(["-6", "-T0", "-c"])
        .arg(src)
        .stdout(file)
        .status()
        .context("running xz (install the xz-utils package)")?;
    if !status.success() {
        bail!("xz failed ({status})");
    }
    std::fs::rename(&tmp, dst)?;
    Ok(())
}

/// Copies the four Fashion-MNIST files into `dir` (skipping those already there).
fn copy_fashion_mnist(from: &Path, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    for name in FASHION_MNIST {
        let (src, dst) = (from.join(name), dir.join(name));
        if dst.exists() {
            continue;
        }
        std::fs::copy(&src, &dst).with_context(|| {
            format!(
                "copying {} (apt-get install -y dataset-fashion-mnist, or --fashion-mnist DIR)",
                src.display()
            )
        })?;
    }
    Ok(())
}

fn dir_size(p: &Path) -> Result<u64> {
    let meta = std::fs::metadata(p)?;
    if !meta.is_dir() {
        return Ok(meta.len());
    }
    let mut total = 0;
    for e in std::fs::read_dir(p)? {
        total += dir_size(&e?.path())?;
    }
    Ok(total)
}

/// Prints the sizes and fails when `dist/cuda` exceeds what may travel.
fn report(stripped: &Path, dist: &Path) -> Result<()> {
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let (bin, xz, total) =
        (std::fs::metadata(stripped)?.len(), std::fs::metadata(dist.join("lt.xz"))?.len(), dir_size(dist)?);
    eprintln!(
        "stripped lt {:.1} MiB -> {} {:.1} MiB; {} in all {:.1} MiB (budget {:.0} MiB)",
        mib(bin),
        dist.join("lt.xz").display(),
        mib(xz),
        dist.display(),
        mib(total),
        mib(DIST_BUDGET)
    );
    if total > DIST_BUDGET {
        bail!(
            "{} holds {:.1} MiB, more than the {:.0} MiB that may travel",
            dist.display(),
            mib(total),
            mib(DIST_BUDGET)
        );
    }
    eprintln!(
        "carry the working tree and {} to the GPU machine; run `bash scripts/gpu_check.sh` there \
         (then `GPU_CHECK_STEPS=more bash scripts/gpu_check.sh`, the second call)",
        dist.display()
    );
    Ok(())
}

/// Entry point of `cargo xtask cuda-build`.
pub fn run(root: &Path, a: &CudaBuildArgs) -> Result<()> {
    run_build(root, a).map(|_| ())
}
