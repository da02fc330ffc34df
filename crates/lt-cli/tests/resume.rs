//! An interrupted stage-1 run, resumed, ends bit-identical to an uninterrupted one.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ARGS: [&str; 12] = [
    "train",
    "--preset",
    "tiny",
    "--epochs",
    "10",
    "--swa-start",
    "6",
    "--synthetic-n-max",
    "160",
    "--batch-size",
    "16",
    "--plain",
];

fn lt() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lt"));
    c.env("LT_DATA_DIR", "/nonexistent-lt-data").env("RAYON_NUM_THREADS", "2");
    c
}

fn checkpoint_epoch(dir: &Path) -> Option<(String, usize)> {
    let a =
        lt_core::Artifact::open(&dir.join("checkpoint.safetensors"), lt_train::checkpoint::CHECKPOINT_FORMAT)
            .ok()?;
    let p: lt_train::checkpoint::Progress = a.meta_json("progress").ok()?;
    Some((format!("{:?}", p.phase), p.next_epoch))
}

#[test]
fn killed_run_resumes_to_identical_weights() {
    let full = tempfile::tempdir().unwrap();
    let out = lt().args(ARGS).arg("--out").arg(full.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let cut = tempfile::tempdir().unwrap();
    let mut child = lt()
        .args(ARGS)
        .arg("--out")
        .arg(cut.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the prefix has checkpointed two epochs, then kill the process in the middle of
    // the next one (SIGKILL: no chance to clean up).
    let started = Instant::now();
    loop {
        if let Some((phase, epoch)) = checkpoint_epoch(cut.path()) {
            if phase == "Some(Prefix)" && epoch >= 2 {
                break;
            }
        }
        assert!(started.elapsed() < Duration::from_secs(120), "the run never checkpointed");
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended ({status}) before it could be interrupted");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(60));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!cut.path().join("swa.safetensors").exists(), "the run finished before it was killed");

    let out = lt().args(ARGS).arg("--out").arg(cut.path()).arg("--resume").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for f in ["sgd.safetensors", "swa.safetensors", "swag.safetensors"] {
        let a = std::fs::read(full.path().join(f)).unwrap();
        let b = std::fs::read(cut.path().join(f)).unwrap();
        assert!(a == b, "{f} differs after resume");
    }
    // The log holds each epoch once.
    let log = std::fs::read_to_string(cut.path().join("train_log.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 6 + 4 + 4, "{log}");
}
