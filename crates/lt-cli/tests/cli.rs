//! The `lt` binary end to end: data description, split artifacts, backbone info and run.

use std::path::Path;
use std::process::Command;

use candle_core::{Device, Tensor};
use lt_core::split::SplitInfo;
use lt_core::{Artifact, ArtifactWriter, Format};
use lt_models::{Arch, Model};

fn lt(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lt"))
        .args(args)
        .env("LT_DATA_DIR", "/nonexistent-lt-data")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `lt data describe --dataset synthetic --write-split DIR/split.safetensors`: (the split's path,
/// what it printed).
fn describe_synthetic(dir: &Path) -> (std::path::PathBuf, String) {
    let split = dir.join("split.safetensors");
    let (ok, out, err) =
        lt(&["data", "describe", "--dataset", "synthetic", "--write-split", split.to_str().unwrap()]);
    assert!(ok, "{err}");
    (split, out)
}

#[test]
fn data_describe_prints_groups_and_writes_the_split() {
    let dir = tempfile::tempdir().unwrap();
    let (split, out) = describe_synthetic(dir.path());
    assert!(out.contains("Many") && out.contains("Medium") && out.contains("Few"), "{out}");
    assert!(out.contains("total      10 classes      1236 images (max 500, min 5)"), "{out}");
    // Each class's training and validation images.
    assert!(out.contains("     9  synthetic_9                5   100  Few"), "{out}");
    let info = SplitInfo::read(&split).unwrap();
    assert_eq!(info.class_counts(), vec![500, 299, 179, 107, 64, 38, 23, 13, 8, 5]);
    assert_eq!(info.dataset, "synthetic");
    assert_eq!(info.val_labels.as_ref().map(|v| v.len()), Some(1000));

    let (ok, _, err) = lt(&["data", "describe", "--dataset", "cifar-lt"]);
    assert!(!ok && err.contains("unknown data set \"cifar-lt\""), "{err}");
}

/// `lt retrain --list-rows` gives each row's settings on the preset's `[retrain]` table when one
/// is given (it printed them on the defaults whatever the preset), else on the defaults.
#[test]
fn list_rows_reads_the_preset() {
    let row = |args: &[&str]| {
        let (ok, out, err) = lt(args);
        assert!(ok, "{err}");
        let line =
            out.lines().find(|l| l.starts_with("swa-la\t")).unwrap_or_else(|| panic!("{out}")).to_string();
        serde_json::from_str::<serde_json::Value>(line.split('\t').nth(2).unwrap()).unwrap()
    };
    let preset = row(&["retrain", "--list-rows", "--preset", "imagenet-lt"]);
    assert_eq!((preset["epochs"].as_u64(), preset["batch_size"].as_u64()), (Some(10), Some(512)), "{preset}");
    assert_eq!(
        (preset["method"].as_str(), preset["backbone"].as_str()),
        (Some("la"), Some("swa")),
        "{preset}"
    );
    let flagged = row(&["retrain", "--list-rows", "--preset", "imagenet-lt", "--epochs", "3"]);
    assert_eq!(
        (flagged["epochs"].as_u64(), flagged["batch_size"].as_u64()),
        (Some(3), Some(512)),
        "{flagged}"
    );
    let defaults = row(&["retrain", "--list-rows"]);
    assert_eq!(
        (defaults["epochs"].as_u64(), defaults["batch_size"].as_u64()),
        (Some(30), Some(128)),
        "{defaults}"
    );
}

/// `lt data fingerprint` (what `cargo xtask reproduce` keys stage 1 by) is the split artifact's
/// fingerprint; with `--available-only`, data whose files are not there are `null`, without a
/// download, where other errors stay errors.
#[test]
fn data_fingerprint_is_the_splits_and_null_only_for_data_not_at_hand() {
    let dir = tempfile::tempdir().unwrap();
    let (split, _) = describe_synthetic(dir.path());
    let (_, recorded) = SplitInfo::recorded(&split).unwrap();
    let (ok, out, err) = lt(&["data", "fingerprint", "--dataset", "synthetic"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["dataset"].as_str(), v["fingerprint"].as_str()),
        (Some("synthetic"), Some(recorded.as_str()))
    );
    // What a run recorded (here the split artifact just written), without loading the data.
    let d = dir.path().to_str().unwrap();
    let (ok, recorded_out, err) = lt(&["data", "fingerprint", "--run", d]);
    assert!(ok && recorded_out == out, "{recorded_out} {err}");
    let none = dir.path().join("no-run");
    std::fs::create_dir_all(&none).unwrap();
    let n = none.to_str().unwrap();
    let (ok, nothing, err) = lt(&["data", "fingerprint", "--available-only", "--run", n]);
    assert!(ok && nothing.trim() == "null", "{nothing} {err}");
    let (ok, _, err) = lt(&["data", "fingerprint", "--run", n]);
    assert!(!ok && err.contains("no stage-1 run here") && err.contains("split.safetensors"), "{err}");
    let (ok, _, err) = lt(&["data", "fingerprint", "--run", d, "--dataset", "synthetic"]);
    assert!(!ok && err.contains("cannot be used with"), "{err}");
    let (ok, _, err) = lt(&["data", "fingerprint", "--run", d, "--imbalance", "10"]);
    assert!(!ok && err.contains("data flags given do not apply"), "{err}");
    let (ok, other, err) = lt(&["data", "fingerprint", "--dataset", "synthetic", "--imbalance", "10"]);
    assert!(ok, "{err}");
    assert_ne!(other, out, "another split, another fingerprint");

    // Data not at hand: a data root that is not there, or one without the data set's files.
    let missing = dir.path().join("nowhere");
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let (m, e) = (missing.to_str().unwrap(), empty.to_str().unwrap());
    // Each with `--available-only`, then without (and without `--download`) and its error.
    for (args, plain, error) in [
        (&["--dataset", "cifar10-lt", "--data-root", m, "--download"][..], 4, "or add --download)"),
        (
            &["--dataset", "folder", "--data-root", m][..],
            4,
            "no such directory (give the folder holding the data set's files)",
        ),
        (&["--dataset", "cifar10-lt", "--data-root", e, "--download"][..], 4, "not found"),
        (&["--dataset", "fmnist-lt", "--data-root", e][..], 4, "not found"),
        (&["--dataset", "folder", "--data-root", e][..], 4, "an empty folder"),
    ] {
        let (ok, out, err) = lt(&[&["data", "fingerprint", "--available-only"][..], args].concat());
        assert!(ok && out.trim() == "null", "{args:?}: {out} {err}");
        let (ok, _, err) = lt(&[&["data", "fingerprint"][..], &args[..plain]].concat());
        assert!(!ok && err.contains(error), "{args:?}: {err}");
    }
    assert!(
        !missing.exists() && std::fs::read_dir(&empty).unwrap().next().is_none(),
        "nothing was downloaded"
    );
    let (ok, _, err) =
        lt(&["data", "fingerprint", "--available-only", "--dataset", "synthetic", "--imbalance", "0.5"]);
    assert!(!ok && err.contains("imbalance"), "a bad setting is an error, not data not at hand: {err}");

    // ImageNet-LT's lists without its images (a disk not mounted): the fingerprint reads the
    // lists alone, where a command that reads the images says which one is missing first.
    let lists = dir.path().join("lists/imagenet-lt");
    std::fs::create_dir_all(&lists).unwrap();
    for (list, line) in
        [("train", "train/n0/a.JPEG 0"), ("val", "train/n0/b.JPEG 0"), ("test", "val/n0/c.JPEG 0")]
    {
        std::fs::write(lists.join(format!("ImageNet_LT_{list}.txt")), format!("{line}\n")).unwrap();
    }
    let root = dir.path().join("lists");
    let args = ["--dataset", "imagenet-lt", "--data-root", root.to_str().unwrap()];
    let (ok, out, err) = lt(&[&["data", "fingerprint", "--available-only"][..], &args].concat());
    assert!(ok && out.contains("\"dataset\":\"imagenet-lt\""), "{out} {err}");
    let (ok, _, err) = lt(&[&["data", "describe"][..], &args].concat());
    assert!(
        !ok && err.contains("a.JPEG: listed in ImageNet_LT_train.txt, but there is no such file"),
        "{err}"
    );
}

#[test]
fn backbone_info_and_run_agree_with_the_library() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out, err) = lt(&["backbone", "info", "--arch", "resnet32", "--classes", "100"]);
    assert!(ok, "{err}");
    assert!(out.contains("parameters: 470004"), "{out}");
    assert!(out.contains("layer3.4.conv2.weight") && out.contains("[64, 64, 3, 3]"), "{out}");

    let m = Model::new(Arch::new("resnet20", 7, 3).unwrap(), 5, &Device::Cpu).unwrap();
    let weights = dir.path().join("w.safetensors");
    m.save(&weights, &[]).unwrap();
    let x = Tensor::randn(0f32, 1.0, (3, 3, 16, 16), &Device::Cpu).unwrap();
    let input = dir.path().join("in.safetensors");
    let mut w = ArtifactWriter::new(Format { name: "input", version: 1 });
    w.push_tensor("input", &x).unwrap();
    w.write(&input).unwrap();
    let output = dir.path().join("out.safetensors");
    let run = |input: &Path| {
        lt(&[
            "backbone",
            "run",
            "--arch",
            "resnet20",
            "--weights",
            weights.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
        ])
    };
    let (ok, _, err) = run(&input);
    assert!(ok, "{err}");
    let a = Artifact::open_any(&output).unwrap();
    let (f, l) = m.infer(&x).unwrap();
    assert_eq!(a.f32("logits").unwrap(), l.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    assert_eq!(a.f32("features").unwrap(), f.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    let (ok, out, _) =
        lt(&["backbone", "info", "--arch", "resnet20", "--weights", weights.to_str().unwrap()]);
    assert!(ok && out.contains("resnet20: 7 classes"), "{out}");

    // Errors: wrong architecture for the file, missing input tensor, unknown architecture.
    let (ok, _, err) =
        lt(&["backbone", "info", "--arch", "resnet32", "--weights", weights.to_str().unwrap()]);
    assert!(!ok && err.contains("holds resnet20, not resnet32"), "{err}");
    let bad_input = dir.path().join("bad.safetensors");
    let mut w = ArtifactWriter::new(Format { name: "input", version: 1 });
    w.push_f32("images", &[1], vec![0.0]);
    w.write(&bad_input).unwrap();
    let (ok, _, err) = run(&bad_input);
    assert!(!ok && err.contains("missing tensor `input`"), "{err}");
    let (ok, _, err) = lt(&["backbone", "info", "--arch", "vgg16"]);
    assert!(!ok && err.contains("unknown architecture \"vgg16\""), "{err}");
    assert!(!Path::new(&dir.path().join("nothing")).exists());
}

#[test]
fn bench_loader_generates_a_jpeg_folder_once_and_loads_it() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("jpegs");
    let f = folder.to_str().unwrap();
    let args = [
        "bench",
        "loader",
        "--data-root",
        f,
        "--generate-jpegs",
        "8",
        "--image-size",
        "32",
        "--batch",
        "2",
        "--batches",
        "3",
    ];
    let (ok, out, err) = lt(&args);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["images"], 6, "{out}");
    assert_eq!((v["dataset"].as_str(), v["sample"].as_str()), (Some("folder"), Some("3x32x32")), "{out}");
    assert!(v["images_per_sec"].as_f64().unwrap() > 0.0, "{out}");
    let jpegs = |c: &str| std::fs::read_dir(folder.join(c)).unwrap().count();
    assert_eq!((0..4).map(|c| jpegs(&format!("class{c}"))).sum::<usize>(), 8);
    let written = std::fs::metadata(folder.join("class0/0.jpg")).unwrap().modified().unwrap();
    let decoded = image::open(folder.join("class2/2.jpg")).unwrap();
    assert_eq!((decoded.width(), decoded.height()), (375, 500));
    // A folder that exists is loaded as it is, not written again; --eval times the other transform.
    let (ok, out, err) = lt(&[&args[..], &["--eval"]].concat());
    assert!(ok, "{err}");
    assert!(out.contains("\"transform\":\"evaluation\""), "{out}");
    assert_eq!(std::fs::metadata(folder.join("class0/0.jpg")).unwrap().modified().unwrap(), written);
    // --generate-jpegs needs --data-root, and writes only an image folder.
    let (ok, _, err) = lt(&["bench", "loader", "--generate-jpegs", "8"]);
    assert!(!ok && err.contains("--data-root"), "{err}");
    let (ok, _, err) =
        lt(&["bench", "loader", "--dataset", "cifar100-lt", "--data-root", f, "--generate-jpegs", "8"]);
    assert!(!ok && err.contains("--dataset cifar100-lt is not one"), "{err}");
    // A preset's data set: the synthetic preset's generated images.
    let (ok, out, err) = lt(&["bench", "loader", "--preset", "synthetic", "--batches", "2", "--batch", "8"]);
    assert!(ok, "{err}");
    assert!(out.contains("\"dataset\":\"synthetic\""), "{out}");
}

#[test]
fn selftest_runs_every_group_in_its_own_process_and_counts_them() {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../lt-models/tests/golden");
    let (ok, out, err) = lt(&["selftest", "--plain", "--fixtures", fixtures]);
    assert!(ok, "{out}\n{err}");
    let summary: Vec<&str> = out.lines().filter(|l| l.contains(" passed on cpu")).collect();
    // The lines the GPU check reads (scripts/gpu_check.sh), in order, each once.
    assert_eq!(
        summary,
        [
            "90/90 checks passed on cpu",
            "14/14 mixed-precision checks passed on cpu",
            "10/10 taped-executor checks passed on cpu",
            "8/8 frozen-snapshot checks passed on cpu",
            "1/1 optimiser checks passed on cpu",
            "10/10 repeatability checks passed on cpu",
            "1/1 loader checks passed on cpu",
        ],
        "{out}"
    );
    assert_eq!(out.lines().filter(|l| l.starts_with("ok ")).count(), 134, "{out}");
    assert!(!out.contains("lt-selftest-result"), "the groups' result lines are read, not printed: {out}");

    // A group that cannot run fails alone: the others still run and count, and the exit says so.
    let (ok, out, err) = lt(&[
        "selftest",
        "--plain",
        "--fixtures",
        "/nonexistent",
        "--only",
        "golden-resnet32-candle,optimiser",
    ]);
    assert!(!ok, "{out}");
    assert!(out.contains("FAIL resnet32 Candle fixture resnet32.safetensors: could not run"), "{out}");
    assert!(
        out.contains("0/0 checks passed on cpu") && out.contains("1/1 optimiser checks passed on cpu"),
        "{out}"
    );
    assert!(err.contains("1 run(s) broken"), "{err}");
    // A group's time limit is at least a second (a hang is stopped: the unit tests of `child`).
    let (ok, _, err) = lt(&["selftest", "--only", "optimiser", "--group-timeout", "0"]);
    assert!(!ok && err.contains("--group-timeout"), "{err}");
}

#[test]
fn bench_backbone_reports_the_step_and_the_hosts_share_of_it() {
    let args = [
        "bench", "backbone", "--arch", "resnet20", "--batch", "2", "--size", "16", "--steps", "3",
        "--warmup", "0",
    ];
    let (ok, out, err) = lt(&args);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let (step, host) =
        (v["median_step_seconds"].as_f64().unwrap(), v["median_host_seconds"].as_f64().unwrap());
    // Each step's enqueue time is part of it, so the medians keep that order.
    assert!(0.0 < host && host <= step, "{out}");
    // Within a relative 1e-12: serde_json's default float parsing can be an ulp off the printed
    // value.
    let ips = v["images_per_sec"].as_f64().unwrap();
    assert!((ips - 2.0 / step).abs() <= 1e-12 * ips, "{out}");
}

/// The plot files report.md's Plots section lists (`plots/x.png` (`.svg`): both), sorted.
fn listed_plots(report: &std::path::Path) -> Vec<String> {
    let md = std::fs::read_to_string(report.join("report.md")).unwrap();
    let section = md.split("## Plots").nth(1).unwrap_or_else(|| panic!("no Plots section:\n{md}"));
    let mut files = Vec::new();
    for line in section.lines().filter_map(|l| l.strip_prefix("- `plots/")) {
        let name = &line[..line.find('`').unwrap()];
        files.push(name.to_string());
        if line.contains("(`.svg`)") {
            files.push(name.replace(".png", ".svg"));
        }
    }
    files.sort();
    files
}

/// The files in a report's plots folder, sorted.
fn plot_files(report: &std::path::Path) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(report.join("plots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    files
}

/// `lt report` over runs laid out by hand: a run given its own row name (`lt retrain --name`)
/// stands beside its plan row, among the other runs; a report from stage 2 alone says why it has
/// no dispersion plots; with the seed's features there, the plots are drawn.
#[test]
fn report_by_hand_lists_named_runs_and_says_when_it_cannot_draw_the_dispersion() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let stage1 = runs.join("seed-0/stage1");
    let s1 = stage1.to_str().unwrap();
    for args in
        [vec!["train", "--preset", "tiny", "--out", s1], vec!["extract", "--preset", "tiny", "--run", s1]]
    {
        let (ok, _, err) = lt(&args);
        assert!(ok, "{err}");
    }
    let features = stage1.join("features.safetensors");
    // LA's row on the features, with `flags`, into `out`.
    let la = |flags: &[&str], out: &std::path::Path| {
        let head = ["retrain", "--preset", "tiny", "--row", "swa-la"];
        let tail = ["--features", features.to_str().unwrap(), "--out", out.to_str().unwrap()];
        lt(&[&head[..], flags, &tail[..]].concat())
    };
    let (ok, _, err) = la(&[], &runs.join("seed-0/stage2/swa-la"));
    assert!(ok, "{err}");
    // Post-hoc LA with a fixed tau beside LA, started from LA's row: a name of its own makes it
    // that name's, whatever its settings (without it, `--row swa-la --method la-posthoc` is
    // refused as another row).
    let (ok, said, err) = la(
        &["--method", "la-posthoc", "--tau", "2", "--name", "la-tau2"],
        &runs.join("seed-0/stage2/la-tau2"),
    );
    assert!(ok && said.starts_with("la-tau2 on ") && !err.contains("directory named"), "{said}{err}");
    // A run written into a directory named otherwise is said (a forgotten --name), as a note;
    // into another plan row's directory, as a warning.
    let (ok, _, err) = la(&["--tau", "3"], &tmp.path().join("elsewhere/la-tau3"));
    let note =
        "writing row swa-la into a directory named la-tau3: lt report lists the run as swa-la (give --name \
                la-tau3 to record it under that name)";
    assert!(ok && err.lines().any(|l| l.contains(" INFO ") && l.contains(note)), "{err}");
    let (ok, _, err) = la(&["--tau", "3"], &tmp.path().join("elsewhere/sgd-la"));
    let warning = "lt report lists the run as swa-la (sgd-la is the plan row sgd-la's directory)";
    assert!(ok && err.lines().any(|l| l.contains(" WARN ") && l.contains(warning)), "{err}");
    // A name is checked as the flags are read; a flag in its place is not taken for the name.
    let (ok, _, err) = la(&["--name", "X"], &tmp.path().join("elsewhere/x"));
    assert!(!ok && err.contains("'X' for '--name <NAME>': a row name has lower-case ASCII letters"), "{err}");
    let (ok, _, err) = la(&["--name"], &tmp.path().join("elsewhere/x"));
    assert!(!ok && err.contains("a value is required for '--name <NAME>'"), "{err}");
    let report = |out: &str| lt(&["report", "--runs", runs.to_str().unwrap(), "--out", out]);
    let (ok, said, err) = report(tmp.path().join("with").to_str().unwrap());
    assert!(ok && !said.contains("no dispersion plots"), "{said}{err}");
    let md = std::fs::read_to_string(tmp.path().join("with/report.md")).unwrap();
    let other = md.split("## Other runs").nth(1).unwrap_or_else(|| panic!("no Other runs table:\n{md}"));
    let other = other.split("## ").next().unwrap_or_default();
    assert!(other.contains("| la-tau2 |") && !other.contains("| LA |"), "{md}");
    assert!(other.contains("Runs outside the plan, each under a name given to `lt retrain --name`"), "{md}");
    // The main table says what its labels mean.
    assert!(
        md.contains("`+ stochastic repr. (b)`, trains the LA head on the representations of the M SWAG"),
        "{md}"
    );
    // Its knob is shown as given, not chosen; LA's as chosen.
    let fixed = md.split("## Knobs not chosen on validation").nth(1).unwrap_or_else(|| panic!("{md}"));
    assert!(fixed.contains("| SWA | la-tau2 | fixed: tau 2.0 |") && !fixed.contains("| LA |"), "{md}");
    assert!(md.contains("| SWA | LA | 0: tau "), "{md}");
    // The plots are listed with what they show.
    assert!(
        md.contains(
            "- `plots/reliability-la-tau2.png` (`.svg`): reliability diagram of SWA la-tau2 (seed(s) 0, "
        ),
        "{md}"
    );
    assert!(tmp.path().join("with/plots/reliability-la-tau2.png").exists());
    assert!(tmp.path().join("with/plots/dispersion.json").exists());
    let with = tmp.path().join("with");
    assert_eq!(listed_plots(&with), plot_files(&with));
    // Reported again into the same folder without the named run: none of its plots stays.
    std::fs::remove_dir_all(runs.join("seed-0/stage2/la-tau2")).unwrap();
    let (ok, said, err) = report(with.to_str().unwrap());
    assert!(ok && !with.join("plots/reliability-la-tau2.png").exists(), "{said}{err}");
    assert_eq!(listed_plots(&with), plot_files(&with));
    std::fs::rename(&features, tmp.path().join("aside.safetensors")).unwrap();
    let (ok, said, err) = report(tmp.path().join("without").to_str().unwrap());
    assert!(
        ok && said.contains(&format!("no dispersion plots: {} is not there", features.display())),
        "{said}{err}"
    );
    assert!(!tmp.path().join("without/plots/dispersion.json").exists());
    // Without any stage 1, the reliability diagrams are still drawn, and the rest is said missing.
    std::fs::rename(&stage1, tmp.path().join("stage1-aside")).unwrap();
    let alone = tmp.path().join("alone");
    let (ok, said, err) = report(alone.to_str().unwrap());
    assert!(
        ok && said.contains("no per-class or dispersion plots: no seed's stage-1 directory"),
        "{said}{err}"
    );
    let md = std::fs::read_to_string(alone.join("report.md")).unwrap();
    assert!(
        md.contains("- not drawn: per-class accuracy and dispersion: no seed's `stage1` directory"),
        "{md}"
    );
    assert_eq!(plot_files(&alone), ["reliability-swa-la.png", "reliability-swa-la.svg"]);
}
