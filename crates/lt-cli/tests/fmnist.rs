//! The pipeline on the real Fashion-MNIST-LT (Debian's `dataset-fashion-mnist`, installed by
//! `.ci/run`): a short stage 1 with SWA, extraction, LA and SRepr, evaluation.

use std::path::Path;
use std::process::Command;

fn lt(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_lt")).args(args).arg("--plain").output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "lt {args:?} failed:\n{stderr}");
    stdout
}

#[test]
fn fashion_mnist_lt_pipeline() {
    if !Path::new("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").exists() {
        if std::env::var_os("LT_SKIP_REAL_DATA").is_some() {
            return;
        }
        panic!("Fashion-MNIST is missing: run `apt-get install -y dataset-fashion-mnist` (or set LT_SKIP_REAL_DATA=1)");
    }
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let r = run.to_str().unwrap();
    let out = lt(&[
        "train",
        "--dataset",
        "fmnist-lt",
        "--arch",
        "cifar-resnet8x8",
        "--epochs",
        "3",
        "--warmup-epochs",
        "1",
        "--swa-start",
        "2",
        "--swa-lr",
        "0.05",
        "--swag-rank",
        "2",
        "--batch-size",
        "128",
        "--out",
        r,
    ]);
    // Test accuracy of the stage-1 backbones on the balanced 10,000-image test set.
    let all = |line: &str| -> f64 { line.split_whitespace().nth(4).unwrap().parse().unwrap() };
    let sgd = out.lines().find(|l| l.starts_with("SGD")).unwrap();
    let swa = out.lines().find(|l| l.starts_with("SWA")).unwrap();
    assert!(all(sgd) > 40.0 && all(swa) > 40.0, "{out}");
    lt(&["extract", "--run", r, "--samples", "2"]);
    let features = run.join("features.safetensors");
    // LA chooses its tau on the validation split; SRepr runs with fixed knobs (a quick run).
    for (method, knobs, said_knobs) in [
        ("la", &[][..], "chose {\"tau\":"),
        (
            "srepr",
            &["--tau", "1", "--lambda", "0.3", "--temperature", "2"][..],
            "fixed {\"lambda\":0.3,\"tau\":1.0,\"temperature\":2.0}",
        ),
    ] {
        let o = run.join(method);
        let f = features.to_str().unwrap();
        let mut args = vec![
            "retrain",
            "--features",
            f,
            "--method",
            method,
            "--epochs",
            "3",
            "--out",
            o.to_str().unwrap(),
        ];
        args.extend_from_slice(knobs);
        let said = lt(&args);
        assert!(said.contains(said_knobs), "{said}");
        let evals = dir.path().join("evals");
        let eval = lt(&[
            "eval",
            "--predictions",
            o.join("predictions.safetensors").to_str().unwrap(),
            "--split-info",
            run.join("split.safetensors").to_str().unwrap(),
            "--out",
            evals.to_str().unwrap(),
        ]);
        assert!(eval.lines().count() >= 2, "{eval}");
        // The knobs as lt retrain said them, in its output and its JSON.
        assert!(eval.contains(&format!("knobs: {said_knobs}")), "{eval}");
        // Named by the row the run records and its seed, side by side with other runs'.
        let json = std::fs::read_to_string(evals.join(format!("swa-{method}-seed-0.json"))).unwrap();
        let json: serde_json::Value = serde_json::from_str(&json).unwrap();
        let kind = if method == "la" { "chosen" } else { "fixed" };
        assert!(json["knobs"][kind]["tau"].is_number(), "{json}");
    }
}
