//! `scripts/gpu_check.sh`'s verdicts and fallbacks, with a stand-in `lt` that prints what a GPU
//! run's `lt selftest` could print and records every other call: the check runs on a GPU
//! machine once in a while, so what it concludes from the selftest is tested here.

use std::path::Path;
use std::process::Command;

/// The selftest output of a GPU run where the taped executor's process crashed and one
/// repeatability check failed, cuDNN refused five ops (max pooling and bf16 batch norm's training
/// pass, each warned about by two processes; its inference pass; the convolution, for three
/// shapes; the persistent batch-norm mode) and max pooling ran out of memory (warned about by two
/// processes); everything else passed.
const SELFTEST: &str = "\
ok   resnet32 Fast logits 0.0
45/45 checks passed on cuda
WARN lt_models: cuDNN refused bf16 max pooling for [4, 32, 32, 16] BF16 (cuDNN failed); using candle's kernels for it
WARN lt_models: cuDNN refused bf16 batch norm (training) for [4, 32, 32, 16] BF16 (cuDNN failed); using f32 for it
WARN lt_models: cuDNN refused bf16 batch norm (inference) for [4, 32, 32, 16] BF16 (cuDNN failed); using f32 for it
WARN lt_models: cuDNN refused the convolution ConvShape { n: 4, c: 16, h: 32, w: 32 } Bf16, no channels-last algorithm (cuDNN refused every Fwd algorithm for ConvShape { n: 4 }: [0, 1]); using candle's convolution
WARN lt_models: cuDNN refused the convolution ConvShape { n: 4, c: 64, h: 8, w: 8 } Bf16, no channels-last algorithm (cuDNN failed); using candle's convolution
14/14 mixed-precision checks passed on cuda
WARN lt_models: cuDNN refused bf16 max pooling for [4, 8, 8, 64] BF16 (cuDNN failed); using candle's kernels for it
WARN lt_models: cuDNN refused bf16 batch norm (training) for [4, 8, 8, 64] BF16 (cuDNN failed); using f32 for it
WARN lt_models: cuDNN refused the convolution ConvShape { n: 4, c: 32, h: 16, w: 16 } Bf16, no channels-last algorithm (cuDNN failed); using candle's convolution
WARN lt_models: cuDNN refused the persistent batch-norm mode for [F32] (cudnnBatchNormalizationForwardTraining: CUDNN_STATUS_NOT_SUPPORTED); using its spatial mode from now on
WARN lt_models: cuDNN ran out of memory in bf16 max pooling for [4, 8, 8, 64] BF16 (DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")); the pool's kept memory was released; using candle's kernels this once
WARN lt_models: cuDNN ran out of memory in bf16 max pooling for [4, 32, 32, 16] BF16 (DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")); the pool's kept memory was released; using candle's kernels this once
FAIL taped: its process was ended by signal 11 (SIGSEGV); its checks are not counted
0/0 taped-executor checks passed on cuda
8/8 frozen-snapshot checks passed on cuda
1/1 optimiser checks passed on cuda
FAIL resnet20 f32 training repeated: step 1 logits 1e-7 (tolerance 0)
19/20 repeatability checks passed on cuda
1/1 loader checks passed on cuda
runs that could not start or end: taped (was ended by signal 11 (SIGSEGV))
";

/// What the stand-in `lt bench backbone` prints: its configuration's JSON line at 1,000 img/s.
const BENCH: &str = r#"
    arch=; mode=; batch=; size=; prev=
    for a in "$@"; do
      case $prev in --arch) arch=$a ;; --mode) mode=$a ;; --batch) batch=$a ;; --size) size=$a ;; esac
      prev=$a
    done
    echo "{\"arch\": \"$arch\", \"mode\": \"$mode\", \"batch\": $batch, \"size\": $size, \"images_per_sec\": 1000, \"median_step_seconds\": 0.1}"
"#;

/// Writes the stand-in `lt` into `dir`: `selftest` prints [`SELFTEST`] (or the file
/// `STAND_IN_SELFTEST` names) and fails as `lt` would;
/// any other call appends its arguments (after `LT_CUDNN_BN_SPATIAL=1` when set) to
/// `dir/calls.txt` and succeeds, `bench backbone` printing [`BENCH`]'s line and `bench retrain`
/// hanging for 30 s with `STAND_IN_HANG` set. Beside it, a `python3` that records and fails
/// PyTorch's benchmark (PyTorch may be installed here: not its CPU run in a test) and runs the
/// real one otherwise.
fn stand_in(dir: &Path) -> std::path::PathBuf {
    let (lt, output, calls) = (dir.join("lt"), dir.join("selftest.txt"), dir.join("calls.txt"));
    std::fs::write(&output, SELFTEST).unwrap();
    let script = format!(
        "#!/bin/sh\necho \"${{LT_CUDNN_BN_SPATIAL:+LT_CUDNN_BN_SPATIAL=1 }}$*\" >>'{}'\ncase \" $* \" in\n  \
         *\" selftest \"*) cat \"${{STAND_IN_SELFTEST:-{}}}\"; exit 1 ;;\n  *\" bench backbone \"*){BENCH};;\n  \
         *\" bench retrain \"*) [ -z \"$STAND_IN_HANG\" ] || sleep 30 ;;\nesac\n",
        calls.display(),
        output.display(),
    );
    std::fs::write(&lt, script).unwrap();
    let python = Command::new("sh").args(["-c", "command -v python3"]).output().unwrap();
    let python = String::from_utf8_lossy(&python.stdout).trim().to_string();
    let wrapper = format!(
        "#!/bin/sh\ncase \"$1\" in *bench_torch.py) echo \"python3 $*\" >>'{}'; echo torch left out >&2; exit 1 ;; \
         esac\nexec '{python}' \"$@\"\n",
        calls.display()
    );
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::write(dir.join("bin/python3"), wrapper).unwrap();
    Command::new("chmod").arg("+x").arg(&lt).arg(dir.join("bin/python3")).status().unwrap();
    lt
}

/// Runs `scripts/gpu_check.sh` on the CPU with the stand-in `lt` of `dir`, output in `dir/out`
/// (one folder for every call, so each must start its own bench.jsonl),
/// with `GPU_CHECK_STEPS` set to `steps` (unset when `None`) and the default budget (345 s; the
/// stand-in takes none of it): (its stdout, summary.tsv).
fn check(dir: &Path, steps: Option<&str>) -> (String, String) {
    check_within(dir, steps, 345)
}

/// [`check`] with a budget of `budget` seconds.
fn check_within(dir: &Path, steps: Option<&str>, budget: u32) -> (String, String) {
    let (_, stdout, summary) = check_env(dir, steps, budget, &[]);
    (stdout, summary)
}

/// [`check_within`] with more environment `env`: (its exit code, stdout, summary.tsv).
fn check_env(
    dir: &Path,
    steps: Option<&str>,
    budget: u32,
    env: &[(&str, &str)],
) -> (Option<i32>, String, String) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let lt = stand_in(dir);
    let out = dir.join("out");
    let path = format!("{}:{}", dir.join("bin").display(), std::env::var("PATH").unwrap_or_default());
    let mut cmd = Command::new("bash");
    cmd.arg(root.join("scripts/gpu_check.sh"))
        .env("OUT", &out)
        .env("LT", &lt)
        .env("PATH", path)
        .env("GPU_CHECK_DEVICE", "cpu")
        .env("CHECK_BUDGET", budget.to_string())
        .env("TMPDIR", dir);
    match steps {
        Some(steps) => cmd.env("GPU_CHECK_STEPS", steps),
        None => cmd.env_remove("GPU_CHECK_STEPS"),
    };
    cmd.envs(env.iter().copied());
    let run = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
    (run.status.code(), stdout, std::fs::read_to_string(out.join("summary.tsv")).unwrap_or_default())
}

#[test]
fn a_crashed_group_fails_its_kind_alone_and_sends_the_pipeline_to_autograd() {
    let dir = tempfile::tempdir().unwrap();
    let (stdout, summary) = check(dir.path(), Some("selftest pipeline"));
    let out = dir.path().join("out");
    let row = |step: &str| -> Vec<String> {
        summary
            .lines()
            .find(|l| l.starts_with(&format!("{step}\t")))
            .unwrap_or_else(|| panic!("no row {step:?} in:\n{summary}\n{stdout}"))
            .split('\t')
            .map(str::to_string)
            .collect()
    };
    // The golden checks passed: their row says so, whatever failed elsewhere.
    assert_eq!(row("selftest (both backends)")[1], "ok", "{summary}");
    assert_eq!(row("selftest bf16 vs f32")[1], "ok", "{summary}");
    // 0/0 with its process crashed: failed, and the row says a process failed.
    let taped = row("selftest taped vs autograd");
    assert_eq!(taped[1], "FAIL", "{summary}");
    assert!(taped[3].contains("1 group process(es) failed"), "{summary}");
    assert_eq!(row("selftest repeatable training")[1], "FAIL", "{summary}");
    assert_eq!(row("selftest SGD passes")[1], "ok", "{summary}");
    assert_eq!(row("selftest loader batches")[1], "ok", "{summary}");
    // Each op refused counts once, whichever processes and shapes it was refused for.
    let refusals = row("cuDNN refusals (fallbacks)");
    assert_eq!((refusals[1].as_str(), refusals[3].starts_with("5 op kind(s)")), ("WARN", true), "{summary}");
    // Running out of memory is not a refusal, and has its own row: ops, not warnings.
    let oom = row("cuDNN out of memory");
    assert_eq!((oom[1].as_str(), oom[3].starts_with("1 op kind(s)")), ("WARN", true), "{summary}");
    // The pipeline trained through candle's autograd, with SGD's CUDA passes kept.
    let calls = std::fs::read_to_string(dir.path().join("calls.txt")).unwrap_or_default();
    let train =
        calls.lines().find(|l| l.contains(" train ")).unwrap_or_else(|| panic!("no train call:\n{calls}"));
    assert!(train.ends_with("--autograd"), "{train}");
    assert!(
        row("fmnist-lt 6 epochs + SRepr")[3].contains("[lt train --autograd: the taped checks did not pass]"),
        "{summary}"
    );
    assert!(!row("fmnist-lt 6 epochs + SRepr")[3].contains("LT_SGD_TENSOR_OPS"), "{summary}");
    // $OUT holds the few files the device tool brings back, the logs among them.
    let mut files: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, ["logs.tar.gz", "summary.tsv", "summary.txt"], "{stdout}");
    // The work directory (binary, logs, run directory) is gone.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("lt-gpu-check."))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// The status of row `step` in a summary.tsv.
fn status<'a>(summary: &'a str, step: &str) -> Option<&'a str> {
    summary.lines().find_map(|l| l.strip_prefix(&format!("{step}\t"))?.split('\t').next())
}

/// A selftest step stopped before some kinds printed their lines (its time ran out): those kinds
/// are "not run", and the pipeline keeps the default paths, which no check found wrong.
#[test]
fn kinds_the_selftest_did_not_reach_are_not_run_and_change_no_path() {
    let dir = tempfile::tempdir().unwrap();
    let partial = dir.path().join("partial.txt");
    std::fs::write(&partial, "90/90 checks passed on cuda\n14/14 mixed-precision checks passed on cuda\n")
        .unwrap();
    let env = [("STAND_IN_SELFTEST", partial.to_str().unwrap())];
    let (_, stdout, summary) = check_env(dir.path(), Some("selftest pipeline"), 345, &env);
    assert_eq!(status(&summary, "selftest (both backends)"), Some("ok"), "{summary}");
    for kind in ["selftest taped vs autograd", "selftest SGD passes", "selftest loader batches"] {
        assert_eq!(status(&summary, kind), Some("not run"), "{kind}: {summary}");
    }
    let calls = std::fs::read_to_string(dir.path().join("calls.txt")).unwrap_or_default();
    let train =
        calls.lines().find(|l| l.contains(" train ")).unwrap_or_else(|| panic!("no train call:\n{calls}"));
    assert!(!train.contains("--autograd"), "{train}");
    let pipeline =
        summary.lines().find(|l| l.starts_with("fmnist-lt")).unwrap_or_else(|| panic!("{summary}"));
    assert!(!pipeline.contains("did not pass"), "{pipeline}");
    assert!(stdout.contains("\nPASS        90/90 golden checks on cpu, both backends"), "{stdout}");
    // A selftest that fails before any kind's line (the device did not open) failed them all.
    std::fs::write(&partial, "Error: opening cuda:0 (was `lt` built with --features cuda?)\n").unwrap();
    let (_, stdout, summary) = check_env(dir.path(), Some("selftest"), 345, &env);
    assert_eq!(status(&summary, "selftest taped vs autograd"), Some("FAIL"), "{summary}");
    assert!(stdout.contains("\nFAIL        90/90 golden checks on cpu, both backends"), "{stdout}");
}

/// `scripts/bench_table.py --verdict`: each of the issue's bars PASS or FAIL from the rows of one
/// call, the TF32 ratio against PyTorch's best default-f32 layout, memory against that variant's.
#[test]
fn the_benchmark_verdict_reads_the_issue_bars() {
    let dir = tempfile::tempdir().unwrap();
    let row = |impl_: &str, variant: Option<&str>, mode: &str, ips: f64, mib: f64| {
        let mem = if variant.is_some() { "peak_cuda_mib" } else { "device_pool_peak_mib" };
        let variant = variant.map(|v| format!(r#""variant": "{v}", "#)).unwrap_or_default();
        format!(
            r#"{{"impl": "{impl_}", {variant}"arch": "resnet32", "mode": "{mode}", "batch": 128, "size": 32, "images_per_sec": {ips}, "{mem}": {mib}}}"#
        )
    };
    let rows = [
        // Training: 0.85x of PyTorch's best layout (channels-last), less memory: both pass.
        row("resnet32-train-project-tf32", None, "train", 8500.0, 400.0),
        row("pytorch-f32", Some("f32"), "train", 9000.0, 300.0),
        row("pytorch-f32-cl", Some("f32-cl"), "train", 10000.0, 500.0),
        // Eval: 0.95x, under its bar of 1.0; more memory than PyTorch.
        row("resnet32-eval-project-tf32", None, "eval", 9500.0, 200.0),
        row("pytorch-f32", Some("f32"), "eval", 10000.0, 100.0),
    ];
    let path = dir.path().join("bench.jsonl");
    std::fs::write(&path, rows.join("\n") + "\n").unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let out = Command::new("python3")
        .arg(root.join("scripts/bench_table.py"))
        .arg("--verdict")
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = |bar: &str| {
        text.lines().find(|l| l.contains(bar)).unwrap_or_else(|| panic!("{bar}: {text}")).to_string()
    };
    assert!(line("resnet32 train b128 32x32: TF32 ratio >= 0.8").starts_with("PASS\t"), "{text}");
    assert!(
        line("resnet32 train b128 32x32: TF32 ratio").contains("0.85x") && text.contains("f32-cl"),
        "{text}"
    );
    assert!(line("resnet32 train b128 32x32: peak memory").starts_with("PASS\t"), "{text}");
    assert!(line("resnet32 eval b128 32x32: TF32 ratio >= 1.0").starts_with("FAIL\t"), "{text}");
    assert!(line("resnet32 eval b128 32x32: TF32 ratio").contains("\t0.95x ("), "{text}");
    assert!(line("resnet32 eval b128 32x32: peak memory").starts_with("FAIL\t"), "{text}");
    assert!(line("resnet50 train b256 224x224: TF32 ratio >= 0.8").starts_with("UNMEASURED\t"), "{text}");
}

#[test]
fn the_check_is_two_calls_and_each_compares_with_its_own_default_step() {
    let dir = tempfile::tempdir().unwrap();
    let calls = || std::fs::read_to_string(dir.path().join("calls.txt")).unwrap_or_default();
    // The default call: the issue's "done when" (golden checks, pipeline, the ratios), naming
    // the second call for the rest.
    let (stdout, summary) = check(dir.path(), None);
    assert!(
        summary.starts_with("unpack lt.xz\t") && summary.contains("\nselftest (both backends)\t"),
        "{summary}"
    );
    assert!(summary.contains("\nbench resnet50-train-project-bf16\t"), "{summary}");
    assert!(!summary.contains("resnet50-eval"), "ResNet-50's eval is the second call's:\n{summary}");
    assert!(!calls().contains("bench loader") && !calls().contains("--profile"), "{}", calls());
    let other =
        "Not in this call: loader bench-more retrain cpu (GPU_CHECK_STEPS=more bash scripts/gpu_check.sh)";
    assert!(stdout.contains(other) && !stdout.contains("Cut short"), "{stdout}");
    // PyTorch's ResNet-50 variants, best f32 layout first (a timeout keeps those done).
    let torch50 = "python3 scripts/bench_torch.py --device cpu --variants f32-cl,bf16-cl,f32,f32-strict-cl --arch resnet50";
    assert!(calls().contains(torch50), "{}", calls());
    // The rows the issue's bars read come first: the project's TF32 rows and PyTorch's, ResNet-32
    // train and eval, then ResNet-50 train; the project's bf16 and strict-f32 rows after them.
    let order: Vec<&str> =
        summary.lines().filter_map(|l| l.strip_prefix("bench ")?.split('\t').next()).collect();
    let last_bar = order.iter().position(|r| *r == "resnet50-train-pytorch").unwrap();
    let first_rest = order.iter().position(|r| r.ends_with("-bf16") || r.ends_with("-f32")).unwrap();
    assert!(last_bar < first_rest && order[0] == "resnet32-train-project-tf32", "{order:?}");
    // The summary ends with the "done when" block, headed by the binary's build, one line per
    // bar: PyTorch did not run here, so the ratios are unmeasured.
    let done = stdout.split("\nDone when (issue #11; ").nth(1).unwrap_or_else(|| panic!("{stdout}"));
    // The stand-in binary is given as LT, so the build is said to be that binary's, not lt.xz's.
    assert!(done.starts_with("the binary LT=") && done.contains(" (dist/cuda/BUILD, for lt.xz: "), "{done}");
    assert!(done.contains("\nUNMEASURED  resnet32 train b128 32x32: TF32 ratio >= 0.8"), "{done}");
    let golden = done.lines().find(|l| l.contains("golden checks")).unwrap_or_else(|| panic!("{done}"));
    assert!(
        golden.starts_with("FAIL        90/90 golden checks on cpu, both backends")
            && golden.ends_with("45/45 checks passed on cuda"),
        "{golden}"
    );
    // The second call measures the default TF32 step itself (not the first call's row, in the
    // same folder here), once per architecture, and bench.md compares each changed setting
    // with it.
    std::fs::remove_file(dir.path().join("calls.txt")).unwrap();
    let (stdout, summary) = check(dir.path(), Some("more"));
    let default_r32 = |calls: &str| {
        calls
            .lines()
            .filter(|l| {
                l.starts_with("bench backbone")
                    && l.contains("resnet32")
                    && l.contains("--steps 20")
                    && l.contains("--mode train --tf32")
                    && !l.contains("--autograd")
            })
            .count()
    };
    assert_eq!(default_r32(&calls()), 3, "the default, the pool's and SGD's rows:\n{}", calls());
    assert!(
        calls().contains("LT_CUDNN_BN_SPATIAL=1 bench backbone --device cpu --arch resnet50"),
        "{}",
        calls()
    );
    assert!(
        summary.contains("\nstage 2 SRepr ImageNet-LT size\t") && !summary.contains("\nselftest"),
        "{summary}"
    );
    assert!(summary.contains("\nbench resnet50-eval-pytorch\t"), "{summary}");
    let bench = std::fs::read_to_string(dir.path().join("out/bench.md")).unwrap();
    let spatial = bench.lines().find(|l| l.contains("LT_CUDNN_BN_SPATIAL=1") && l.contains("resnet50"));
    assert!(spatial.is_some_and(|l| l.contains("| 1,000 | 1,000 | 1.00x |")), "{bench}");
    assert!(
        stdout.contains("Not in this call: selftest pipeline bench (GPU_CHECK_STEPS=done-when"),
        "{stdout}"
    );
    // One call with both (in the steps' order, whatever the order given): the bench step's row
    // is the default, not measured again.
    std::fs::remove_file(dir.path().join("calls.txt")).unwrap();
    let (stdout, _) = check(dir.path(), Some("bench-more bench"));
    assert_eq!(default_r32(&calls()), 3, "bench's row, the pool's and SGD's:\n{}", calls());
    // The steps left, as the two calls that run them.
    let other = "Not in this call: selftest pipeline loader retrain cpu (GPU_CHECK_STEPS=\"selftest pipeline\" bash \
                 scripts/gpu_check.sh; then GPU_CHECK_STEPS=\"loader retrain cpu\" bash scripts/gpu_check.sh)";
    assert!(stdout.contains(other), "{stdout}");
    // bench-more leaves stage 2 its 100 s: with 105 s in all, its rows are skipped, not stage 2.
    let (stdout, summary) = check_within(dir.path(), Some("bench-more retrain"), 105);
    assert_eq!(status(&summary, "bench resnet32-train-project-tf32"), Some("skipped"), "{summary}");
    assert_eq!(status(&summary, "profile resnet50 train b64 TF32"), Some("skipped"), "{summary}");
    assert_eq!(status(&summary, "stage 2 SRepr ImageNet-LT size"), Some("ok"), "{summary}");
    let cut = "Cut short in this call (a row skipped or timed out): bench-more. To run them again: \
               GPU_CHECK_STEPS=\"bench-more\"";
    assert!(stdout.contains(cut), "{stdout}");
}

#[test]
fn the_check_refuses_unknown_steps_before_making_anything_and_names_timeouts_as_cut() {
    let dir = tempfile::tempdir().unwrap();
    for steps in ["bogus", " ", "*"] {
        let (code, _, _) = check_env(dir.path(), Some(steps), 345, &[]);
        assert_eq!(code, Some(2), "{steps:?}");
        assert!(!dir.path().join("out").exists(), "{steps:?} made the output folder");
    }
    // A row that runs out of time (here the budget's: 12 s in all) marks its step as cut short.
    let (code, stdout, summary) = check_env(dir.path(), Some("retrain"), 12, &[("STAND_IN_HANG", "1")]);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(summary.contains("\nstage 2 SRepr ImageNet-LT size\ttimeout\t"), "{summary}");
    let cut = "Cut short in this call (a row skipped or timed out): retrain. To run them again: \
               GPU_CHECK_STEPS=\"retrain\" bash scripts/gpu_check.sh";
    assert!(stdout.contains(cut), "{stdout}");
}
