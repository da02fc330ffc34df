//! Bad input, end to end: every case of `bad_input.cases` runs `lt` on a fresh copy of a small
//! finished reproduction (stage 1, features, one stage-2 method, a second run for provenance
//! checks), after the case's setup has damaged it, and must
//!
//! - exit non-zero, without a panic (exit code 101 or "panicked" in the output),
//! - say what is wrong: its error output contains the case's expected text,
//! - leave the copy exactly as it found it (every file's bytes; the lock file `.lt-lock` aside).
//!
//! The cases are data: one line each in `tests/bad_input.cases`, `name | setup | command |
//! expected`, with `{c}` standing for the copy's root. Setup steps, separated by `;`, are
//! `write PATH TEXT` (`\n` for a newline), `trunc PATH BYTES`, `rm PATH`, `mkdir PATH`,
//! `cp FROM TO`, `nan PATH TENSOR` (the tensor's first value becomes NaN), `lock DIR` (this
//! test holds the directory's run lock while the command runs) and `tiny PATH KEY=VALUE` (the
//! embedded `tiny` preset with one dotted key set to a TOML value).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use lt_core::lock::{RunLock, LOCK_FILE};

const CASES: &str = include_str!("bad_input.cases");

/// One line of the table.
struct Case<'a> {
    name: &'a str,
    setup: &'a str,
    command: &'a str,
    expected: &'a str,
}

fn parse_cases() -> Vec<Case<'static>> {
    CASES
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|(i, l)| {
            let f: Vec<&str> = l.split(" | ").map(str::trim).collect();
            assert_eq!(f.len(), 4, "bad_input.cases line {}: 4 fields separated by ` | `: {l}", i + 1);
            Case { name: f[0], setup: f[1], command: f[2], expected: f[3] }
        })
        .collect()
}

/// Runs `lt` with `args`: (exit code, stdout + stderr).
fn lt(args: &[String]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lt"))
        .arg("--plain")
        .args(args)
        .env("LT_DATA_DIR", "/nonexistent-lt-data")
        .env("HF_HUB_OFFLINE", "1")
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("running lt");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code(), text)
}

fn run_ok(args: &str) {
    let args: Vec<String> = args.split_whitespace().map(String::from).collect();
    let (code, text) = lt(&args);
    assert_eq!(code, Some(0), "fixture step `lt {}` failed:\n{text}", args.join(" "));
}

/// The small finished reproduction every case starts from.
fn fixture(root: &Path) {
    let r = root.display();
    run_ok(&format!("train --preset tiny --seed 0 --out {r}/runs/seed-0/stage1"));
    run_ok(&format!("extract --preset tiny --run {r}/runs/seed-0/stage1"));
    run_ok(&format!("train --preset tiny --seed 1 --out {r}/other"));
    run_ok(&format!("extract --preset tiny --run {r}/other"));
    // Twice: the same run replaces its own outputs (another run's are refused: `retrain-other-run`).
    for _ in 0..2 {
        run_ok(&format!(
            "retrain --preset tiny --row swa-la --features {r}/runs/seed-0/stage1/features.safetensors \
             --out {r}/runs/seed-0/stage2/swa-la"
        ));
    }
    // The same row with other settings, for a report that would average them.
    run_ok(&format!(
        "retrain --preset tiny --row swa-la --epochs 3 --features {r}/runs/seed-0/stage1/features.safetensors \
         --out {r}/epochs-3/swa-la"
    ));
    // The same run under a name of its own, for a report that would show it twice.
    run_ok(&format!(
        "retrain --preset tiny --row swa-la --name la-again --features {r}/runs/seed-0/stage1/features.safetensors \
         --out {r}/named/la-again"
    ));
    std::fs::write(root.join("preset-ok.toml"), "name = \"mine\"\n").unwrap();
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if e.file_type().unwrap().is_dir() {
            copy_tree(&src, &dst);
        } else if e.file_name().to_string_lossy() != LOCK_FILE {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

/// Every file under `root` (relative path -> bytes), lock files aside; directories as `None`.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Option<Vec<u8>>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let rel = e.path().strip_prefix(root).unwrap().to_path_buf();
            if e.file_type().unwrap().is_dir() {
                out.insert(rel, None);
                walk(root, &e.path(), out);
            } else if e.file_name().to_string_lossy() != LOCK_FILE {
                out.insert(rel, Some(std::fs::read(e.path()).unwrap()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// Sets the first value of `tensor` in the safetensors file at `path` to NaN (f32 or f16).
fn poison(path: &Path, tensor: &str) {
    let mut bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let t = &header[tensor];
    let start =
        8 + n + t["data_offsets"][0].as_u64().unwrap_or_else(|| panic!("no tensor {tensor}")) as usize;
    match t["dtype"].as_str().unwrap() {
        "F32" => bytes[start..start + 4].copy_from_slice(&f32::NAN.to_le_bytes()),
        "F16" => bytes[start..start + 2].copy_from_slice(&0x7e00u16.to_le_bytes()),
        d => panic!("nan: {tensor} is {d}"),
    }
    std::fs::write(path, bytes).unwrap();
}

/// The `tiny` preset with `key=value` set (`train.lr=-0.1`, `retrain.select.tau_grid=[]`).
fn tiny_with(assignment: &str) -> String {
    let (key, value) = assignment.split_once('=').expect("tiny PATH KEY=VALUE");
    let mut preset: toml::Value = toml::from_str(include_str!("../../../presets/tiny.toml")).unwrap();
    let value: toml::Value = toml::from_str::<toml::Table>(&format!("v = {value}")).unwrap()["v"].clone();
    let path: Vec<&str> = key.split('.').collect();
    let mut table = preset.as_table_mut().unwrap();
    for k in &path[..path.len() - 1] {
        table = table
            .entry(k.to_string())
            .or_insert(toml::Value::Table(Default::default()))
            .as_table_mut()
            .unwrap();
    }
    table.insert(path[path.len() - 1].to_string(), value);
    toml::to_string(&preset).unwrap()
}

/// Applies a case's setup to the copy at `c`; returns the locks it holds.
fn setup(c: &Path, steps: &str) -> Vec<RunLock> {
    let mut locks = Vec::new();
    for step in steps.split(';').map(str::trim).filter(|s| !s.is_empty() && *s != "-") {
        let (op, rest) = step.split_once(' ').unwrap_or((step, ""));
        let mut args = rest.splitn(2, ' ');
        let path = c.join(args.next().unwrap_or_default());
        let arg = args.next().unwrap_or_default();
        match op {
            "write" => {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, arg.replace("\\n", "\n")).unwrap()
            }
            "trunc" => std::fs::File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_len(arg.parse().unwrap())
                .unwrap(),
            "rm" => std::fs::remove_file(&path).unwrap(),
            "mkdir" => std::fs::create_dir_all(&path).unwrap(),
            "cp" => {
                let to = c.join(arg);
                std::fs::create_dir_all(to.parent().unwrap()).unwrap();
                std::fs::copy(&path, to).unwrap();
            }
            "nan" => poison(&path, arg),
            "lock" => {
                // Made first, so that the directory outlives this test's lock like a real holder's.
                std::fs::create_dir_all(&path).unwrap();
                locks.push(RunLock::acquire(&path, "bad_input test").unwrap())
            }
            "tiny" => std::fs::write(&path, tiny_with(arg)).unwrap(),
            other => panic!("unknown setup step {other:?} in {steps:?}"),
        }
    }
    locks
}

/// What went wrong with one case, or `None`.
fn check(case: &Case, fixture: &Path, scratch: &Path) -> Option<String> {
    let c = scratch.join(case.name);
    copy_tree(fixture, &c);
    let locks = setup(&c, case.setup);
    let before = snapshot(&c);
    let root = c.display().to_string();
    let args: Vec<String> = case.command.split_whitespace().map(|a| a.replace("{c}", &root)).collect();
    let (code, text) = lt(&args);
    drop(locks);
    let mut wrong = Vec::new();
    if code == Some(0) {
        wrong.push("exited 0".to_string());
    }
    if code == Some(101) || text.contains("panicked") {
        wrong.push("panicked".to_string());
    }
    if !text.contains(&case.expected.replace("{c}", &root)) {
        wrong.push(format!("output lacks {:?}", case.expected));
    }
    let after = snapshot(&c);
    if after != before {
        let changed: Vec<String> = after
            .keys()
            .chain(before.keys())
            .filter(|k| after.get(*k) != before.get(*k))
            .map(|k| k.display().to_string())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        wrong.push(format!("changed {}", changed.join(", ")));
    }
    let _ = std::fs::remove_dir_all(&c);
    (!wrong.is_empty()).then(|| {
        let tail: Vec<&str> = text.lines().rev().take(4).collect();
        format!(
            "{}: {} (`lt {}`; output ends: {})",
            case.name,
            wrong.join("; "),
            args.join(" "),
            tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
        )
    })
}

#[test]
fn the_cases_are_many_distinct_and_cover_every_subcommand() {
    let cases = parse_cases();
    assert!(cases.len() >= 60, "{} cases", cases.len());
    let names: std::collections::BTreeSet<&str> = cases.iter().map(|c| c.name).collect();
    assert_eq!(names.len(), cases.len(), "case names must be distinct");
    for sub in ["data", "backbone", "train", "extract", "retrain", "eval", "report", "selftest", "bench"] {
        assert!(
            cases.iter().any(|c| c.command.split_whitespace().next() == Some(sub)),
            "no case for `lt {sub}`"
        );
    }
}

#[test]
fn every_bad_input_fails_cleanly_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let fx = tmp.path().join("fixture");
    fixture(&fx);
    let scratch = tmp.path().join("cases");
    let only = std::env::var("BAD_INPUT_CASE").ok();
    let failures: Vec<String> = parse_cases()
        .iter()
        .filter(|c| only.as_deref().is_none_or(|o| c.name == o))
        .filter_map(|c| check(c, &fx, &scratch))
        .collect();
    assert!(failures.is_empty(), "{} case(s) failed:\n{}", failures.len(), failures.join("\n"));
}
