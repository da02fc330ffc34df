//! Your own data end to end, without network: Fashion-MNIST-LT written as PNG files into an image
//! folder (real images, a real long tail), stage 1 from a pretrained-format checkpoint served by
//! a hub-cache fixture (offline), the whole `cargo xtask reproduce --preset folder` pipeline and
//! its report; and the refusals of bad `--init` input.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{Device, Tensor};
use lt_data::folder_data::{write_longtail_folder, FolderExport};
use lt_data::idx::{self, IdxVariant};
use lt_models::{Arch, Model};

const FMNIST: &str = "/usr/share/datasets/fashion-mnist";
const REPO: &str = "test-org/tiny-resnet";
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

fn fmnist_available() -> bool {
    if Path::new(FMNIST).join("train-images-idx3-ubyte.gz").exists() {
        return true;
    }
    if std::env::var_os("LT_SKIP_REAL_DATA").is_some() {
        return false;
    }
    panic!("Fashion-MNIST is missing: run `apt-get install -y dataset-fashion-mnist` (or set LT_SKIP_REAL_DATA=1)");
}

/// The image folder (4 classes, 40 images in the head class, imbalance 10, 20 test images per
/// class) and the hub cache holding a pretrained-format ResNet for 10 classes.
struct Fixture {
    _tmp: tempfile::TempDir,
    data: PathBuf,
    cache: PathBuf,
    root: PathBuf,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let data = root.join("fmnist-folder");
    let (pool, test) = idx::load(IdxVariant::FashionMnist, &[PathBuf::from(FMNIST)], None, None).unwrap();
    let export = FolderExport { classes: 4, n_max: 40, imbalance: 10.0, test_per_class: 20 };
    write_longtail_folder(&pool, &test, &data, &export).unwrap();
    let cache = hub_cache(&root);
    Fixture { _tmp: tmp, data, cache, root }
}

/// A hub cache under `root` laid out like the real one: refs/main without a trailing newline, the
/// file under its snapshot; plain safetensors with timm/torchvision names and no
/// `num_batches_tracked`, a ResNet for 10 classes.
fn hub_cache(root: &Path) -> PathBuf {
    let cache = root.join("hub");
    let repo_dir = cache.join(format!("models--{}", REPO.replace('/', "--")));
    std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
    std::fs::write(repo_dir.join("refs/main"), COMMIT).unwrap();
    let snap = repo_dir.join("snapshots").join(COMMIT);
    std::fs::create_dir_all(&snap).unwrap();
    let m = Model::new(Arch::new("cifar-resnet8x4", 10, 3).unwrap(), 42, &Device::Cpu).unwrap();
    let mut t: HashMap<String, Tensor> =
        m.store().named_params().into_iter().map(|(n, v)| (n, v.as_tensor().clone())).collect();
    t.extend(m.store().named_buffers().into_iter().filter(|(n, _)| !n.ends_with("num_batches_tracked")));
    candle_core::safetensors::save(&t, snap.join("model.safetensors")).unwrap();
    cache
}

/// `lt backbone init`, which `cargo xtask reproduce` asks for the identity of a preset's init: a
/// cached hub file's repository, commit and SHA-256 (the `identity` `lt train` fingerprints),
/// `null` with `--cached-only` for a file the cache lacks, a refusal naming the cache offline,
/// and a local file named by its content.
#[test]
fn backbone_init_names_the_weights_a_run_starts_from() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = hub_cache(tmp.path());
    let init = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_lt"))
            .args(["backbone", "init"])
            .args(args)
            .env("HF_HUB_CACHE", &cache)
            .env("HF_HUB_OFFLINE", "1")
            .output()
            .unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.success(), text(&out.stdout), text(&out.stderr))
    };
    let spec = format!("hub:{REPO}");
    let file = cache.join(format!("models--test-org--tiny-resnet/snapshots/{COMMIT}/model.safetensors"));
    let sha = lt_train::init::sha256_file(&file).unwrap();
    for args in [vec![spec.as_str(), "--cached-only"], vec![spec.as_str()]] {
        let (ok, out, err) = init(&args);
        assert!(ok, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            (v["repo"].as_str(), v["commit"].as_str(), v["sha256"].as_str()),
            (Some(REPO), Some(COMMIT), Some(sha.as_str()))
        );
        let identity = format!("{spec} repo={REPO} commit={COMMIT} sha256={sha}");
        assert_eq!(v["identity"].as_str(), Some(identity.as_str()), "{out}");
    }
    assert_eq!(init(&["hub:test-org/absent", "--cached-only"]).1.trim(), "null");
    let (ok, _, err) = init(&["hub:test-org/absent"]);
    assert!(!ok && err.contains("not in the offline cache"), "{err}");
    // A local file, through xtask's plan-time identity: its content names it.
    let lt = Path::new(env!("CARGO_BIN_EXE_lt"));
    let p = tmp.path().join("w.safetensors");
    let local = p.to_str().unwrap();
    std::fs::write(&p, b"one").unwrap();
    let a = xtask::pretrained::identity(lt, local).unwrap();
    assert_eq!(a, format!("{local} {}", lt_train::init::sha256_file(&p).unwrap()));
    std::fs::write(&p, b"two").unwrap();
    assert_ne!(xtask::pretrained::identity(lt, local).unwrap(), a);
    let err = xtask::pretrained::identity(lt, "/nonexistent/w.safetensors").unwrap_err().to_string();
    assert!(err.contains("/nonexistent/w.safetensors is not a file"), "{err}");
}

/// Runs `lt` offline against the fixture's hub cache: `(success, stdout, stderr)`.
fn lt(f: &Fixture, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lt"))
        .args(args)
        .arg("--plain")
        .env("HF_HUB_CACHE", &f.cache)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

#[test]
fn lt_train_starts_from_the_hub_cache_and_refuses_bad_init_input_by_name() {
    if !fmnist_available() {
        return;
    }
    let f = fixture();
    let out = f.root.join("run");
    let (d, o) = (f.data.to_str().unwrap(), out.to_str().unwrap());
    let train = |extra: &[&str]| {
        let mut args = vec![
            "train",
            "--dataset",
            "folder",
            "--data-root",
            d,
            "--image-size",
            "28",
            "--epochs",
            "2",
            "--warmup-epochs",
            "1",
            "--no-swa",
            "--batch-size",
            "16",
            "--out",
            o,
        ];
        if !extra.contains(&"--arch") {
            args.extend(["--arch", "cifar-resnet8x4"]);
        }
        args.extend_from_slice(extra);
        lt(&f, &args)
    };
    let init = format!("hub:{REPO}");
    let (ok, stdout, stderr) = train(&["--init", &init, "--backbone-lr-scale", "0.1"]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains(&format!("from {init}")) && stderr.contains(COMMIT), "{stderr}");
    assert!(
        stderr.contains("classifier re-initialised for 4 classes") && stderr.contains("is for 10 classes"),
        "{stderr}"
    );
    assert!(stdout.contains("SGD"), "{stdout}");
    std::fs::remove_dir_all(&out).unwrap();

    for (flags, culprit) in [
        (vec!["--init", "hub:test-org/absent"], "test-org/absent/model.safetensors"),
        (
            vec!["--init", "hub:test-org/tiny-resnet:other.safetensors"],
            "test-org/tiny-resnet/other.safetensors",
        ),
        (vec!["--init", "hub:test-org/tiny-resnet@v2"], "revision v2"),
        (vec!["--init", "hub:oops"], "train.init \"hub:oops\""),
        (vec!["--init", "/nonexistent/w.safetensors"], "/nonexistent/w.safetensors is not a file"),
        (vec!["--init", "hub:test-org/tiny-resnet", "--arch", "resnet18"], "model.safetensors: missing"),
        (
            vec!["--backbone-lr-scale", "2"],
            "train.backbone_lr_scale must be a finite number in [0, 1], got 2",
        ),
    ] {
        let (ok, _, stderr) = train(&flags);
        assert!(!ok && stderr.contains(culprit), "{flags:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{flags:?}: {stderr}");
        for f in ["train_config.json", "split.safetensors", "data_spec.json"] {
            assert!(!out.join(f).exists(), "{flags:?} wrote {f}");
        }
    }
    let (ok, _, stderr) = train(&["--init", "hub:test-org/absent"]);
    assert!(!ok && stderr.contains("not in the offline cache"), "{stderr}");
}

/// `cargo xtask reproduce --preset folder --data-root DIR --init hub:...` with the shipped preset
/// scaled down (a tiny architecture, 28x28 images, a few epochs).
#[test]
fn the_folder_preset_runs_end_to_end_from_a_hub_checkpoint() {
    if !fmnist_available() {
        return;
    }
    let f = fixture();
    let root = xtask::workspace_root();
    let mut preset: toml::Value =
        toml::from_str(&std::fs::read_to_string(root.join("presets/folder.toml")).unwrap()).unwrap();
    let set = |p: &mut toml::Value, path: &[&str], v: toml::Value| {
        let (last, parents) = path.split_last().unwrap();
        let mut t = p;
        for k in parents {
            t = t.get_mut(*k).unwrap();
        }
        t.as_table_mut().unwrap().insert(last.to_string(), v);
    };
    use toml::Value::{Float, Integer, String as S};
    let edits: [(&[&str], toml::Value); 11] = [
        (&["data", "image_size"], Integer(28)),
        (&["train", "arch"], S("cifar-resnet8x4".into())),
        (&["train", "epochs"], Integer(4)),
        (&["train", "batch_size"], Integer(16)),
        (&["train", "lr"], Float(0.05)),
        (&["train", "swa", "start"], Integer(3)),
        (&["train", "swa", "lr"], Float(0.02)),
        (&["train", "swa", "rank"], Integer(2)),
        (&["extract", "samples"], Integer(2)),
        (&["retrain", "epochs"], Integer(3)),
        (&["retrain", "batch_size"], Integer(64)),
    ];
    for (path, v) in edits {
        set(&mut preset, path, v);
    }
    let tiny: toml::Value =
        toml::from_str(&std::fs::read_to_string(root.join("presets/tiny.toml")).unwrap()).unwrap();
    set(&mut preset, &["retrain", "select"], tiny["retrain"]["select"].clone());
    let file = f.root.join("folder-small.toml");
    std::fs::write(&file, toml::to_string(&preset).unwrap()).unwrap();
    // The `lt` commands xtask runs inherit the offline hub cache.
    std::env::set_var("HF_HUB_CACHE", &f.cache);
    std::env::set_var("HF_HUB_OFFLINE", "1");
    let opts = xtask::reproduce::Options {
        preset: "folder".into(),
        preset_file: Some(file),
        seeds: None,
        data_root: Some(f.data.clone()),
        download: false,
        init: Some(format!("hub:{REPO}")),
        runs_dir: f.root.join("runs"),
        device: "cpu".into(),
        dry_run: false,
        lt: Some(PathBuf::from(env!("CARGO_BIN_EXE_lt"))),
    };
    let first = xtask::reproduce::run(&root, &opts).unwrap();
    let report = std::fs::read_to_string(&first.report).unwrap();
    println!("{report}");
    for want in
        ["| SWA | SRepr |", "## Classes", "| 0 | 0-T-shirt-top | 20 | Medium |", "| 3 | 3-Dress | 2 | Few |"]
    {
        assert!(report.contains(want), "{want} missing from\n{report}");
    }
    let stage1 = f.root.join("runs/folder/seed-0/stage1");
    let config = std::fs::read_to_string(stage1.join("train_config.json")).unwrap();
    assert!(
        config.contains("\"init\": \"hub:test-org/tiny-resnet\"") && config.contains("backbone_lr_scale")
    );
    let split = lt_core::split::SplitInfo::read(&stage1.join("split.safetensors")).unwrap();
    // 20 validation images of the 40-image class, half of each smaller one (18, 8, 4 images).
    assert_eq!(split.val_labels.map(|v| v.len()), Some(20 + 9 + 4 + 2));
    // The init's identity is part of the stage keys: a second run does nothing.
    let second = xtask::reproduce::run(&root, &opts).unwrap();
    assert!(second.ran.is_empty(), "re-ran {:?}", second.ran);
    let lt_bin = PathBuf::from(env!("CARGO_BIN_EXE_lt"));
    let resolved = f.root.join("runs/folder/preset.toml");
    stage1_follows_the_folders_images(&f, &lt_bin, &resolved, &stage1);
    // A dry run writes nothing under its runs directory (the resolved preset goes to a temporary
    // file for the data's fingerprint and the measurements).
    let dry = xtask::reproduce::Options { dry_run: true, runs_dir: f.root.join("dry"), ..opts.clone() };
    let planned = xtask::reproduce::run(&root, &dry).unwrap();
    assert!(planned.ran.is_empty() && !f.root.join("dry").exists(), "{planned:?}");
    // A dry run plans data not at hand (here a folder not there), where a run's stage 1 stops
    // naming it.
    let absent = xtask::reproduce::Options { data_root: Some(f.root.join("nowhere")), ..dry.clone() };
    assert!(xtask::reproduce::run(&root, &absent).unwrap().ran.is_empty());
    let err =
        xtask::reproduce::run(&root, &xtask::reproduce::Options { dry_run: false, ..absent }).unwrap_err();
    let err = format!("{err:#}");
    assert!(
        err.contains("stage 1")
            && err.contains("which are not at hand")
            && err.contains("nowhere: no such directory"),
        "{err}"
    );
    // With the images elsewhere (the folder an empty mount point), a finished run plans with the
    // data its stage 1 recorded: a stage-2 knob changed re-runs stage 2 alone; a stage-1 knob
    // changed stops the run before it clears anything.
    let away = f.root.join("images-elsewhere");
    std::fs::rename(&f.data, &away).unwrap();
    std::fs::create_dir(&f.data).unwrap();
    let text = std::fs::read_to_string(opts.preset_file.as_ref().unwrap()).unwrap();
    let knob = |name: &str, from: &str, to: &str| {
        let file = f.root.join(name);
        assert!(text.contains(from), "{from} in {text}");
        std::fs::write(&file, text.replacen(from, to, 1)).unwrap();
        xtask::reproduce::run(&root, &xtask::reproduce::Options { preset_file: Some(file), ..opts.clone() })
    };
    // `lt extract` reads the data where stage 1 found them; moved, `--data-root` says where they
    // are now (the same data: the same features, bit for bit).
    let features = std::fs::read(stage1.join(lt_core::layout::FEATURES_FILE)).unwrap();
    let extract = |more: &[&str]| {
        let base =
            ["extract", "--run", stage1.to_str().unwrap(), "--preset-file", resolved.to_str().unwrap()];
        lt(&f, &[&base[..], more].concat())
    };
    let (ok, _, err) = extract(&[]);
    assert!(
        !ok && err.contains("an empty folder") && err.contains("if they have moved, give --data-root NEW"),
        "{err}"
    );
    // Pointed at other data (here one training image fewer), it refuses and says where to look.
    let class = std::fs::read_dir(away.join("train")).unwrap().next().unwrap().unwrap().path();
    let image = std::fs::read_dir(&class).unwrap().next().unwrap().unwrap().path();
    let aside = f.root.join("aside.png");
    std::fs::rename(&image, &aside).unwrap();
    let (ok, _, err) = extract(&["--data-root", away.to_str().unwrap()]);
    assert!(
        !ok && err.contains("split fingerprints differ") && err.contains("point --data-root at them"),
        "{err}"
    );
    std::fs::rename(&aside, &image).unwrap();
    let (ok, _, err) = extract(&["--data-root", away.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(std::fs::read(stage1.join(lt_core::layout::FEATURES_FILE)).unwrap() == features);
    let stage2 = knob("folder-stage2.toml", "epochs = 3", "epochs = 2");
    let stage1_run = knob("folder-stage1.toml", "epochs = 4", "epochs = 5");
    std::fs::remove_dir(&f.data).unwrap();
    std::fs::rename(&away, &f.data).unwrap();
    let (stage2, stage1_err) = (stage2.unwrap(), format!("{:#}", stage1_run.unwrap_err()));
    let rows = xtask::reproduce::stage2_rows(&lt_bin).unwrap();
    assert_eq!(stage2.ran.len(), rows.len(), "{:?}", stage2.ran);
    assert!(stage2.ran.iter().all(|s| s.contains("stage 2")), "{:?}", stage2.ran);
    assert!(
        stage1_err.contains("must run and reads the data") && stage1_err.contains("an empty folder"),
        "{stage1_err}"
    );
    assert!(stage1.join("sgd.safetensors").exists(), "nothing was cleared");
    // The dry run's measurements: the data set's sizes, the architecture and a few timed steps.
    let setup = xtask::estimate::Setup {
        arch: "cifar-resnet8x4".into(),
        precision: "f32".into(),
        batch: 16,
        workers: [1, 2],
    };
    let m = xtask::estimate::measure(&lt_bin, &resolved, &setup, "cpu").unwrap();
    assert_eq!((m.images, m.classes, m.size, m.dim), ([35, 35, 80], 4, 28, 16), "{m:?}");
    assert!(m.params > 1000 && m.train_ips > 0.0 && m.eval_ips > 0.0 && m.retrain_epoch_s > 0.0, "{m:?}");
    // The loader on the folder's own PNGs, both transforms.
    assert!(m.loader_train_ips > 0.0 && m.loader_eval_ips > 0.0, "{m:?}");
}

/// `lt data fingerprint` gives the split fingerprint stage 1 recorded, and stage 1's key holds it:
/// a training image replaced by another under the same name makes the plan run stage 1 and what
/// follows again, though the preset is the same text.
fn stage1_follows_the_folders_images(f: &Fixture, lt_bin: &Path, resolved: &Path, stage1: &Path) {
    let (ok, out, err) = lt(f, &["data", "fingerprint", "--preset-file", resolved.to_str().unwrap()]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let (_, recorded) =
        lt_core::split::SplitInfo::recorded(&stage1.join(lt_core::layout::SPLIT_FILE)).unwrap();
    assert_eq!((v["dataset"].as_str(), v["fingerprint"].as_str()), (Some("folder"), Some(recorded.as_str())));
    let preset: toml::Value = toml::from_str(&std::fs::read_to_string(resolved).unwrap()).unwrap();
    let rows = xtask::reproduce::stage2_rows(lt_bin).unwrap();
    let stale = || -> Vec<String> {
        let id =
            xtask::reproduce::data_identity(lt_bin, resolved, true).unwrap().expect("the folder is there");
        let run_root = f.root.join("runs/folder");
        let stages = xtask::reproduce::plan(lt_bin, &run_root, resolved, &preset, "cpu", &rows, &id).unwrap();
        stages.into_iter().filter(|s| !xtask::reproduce::is_done(s)).map(|s| s.name).collect()
    };
    assert!(stale().is_empty(), "{:?}", stale());
    // Another image of the same class under the first training image's name (a different size).
    let first_in = |dir: &Path| {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        v.sort();
        v
    };
    let class = first_in(&f.data.join("train"))[0].clone();
    let images = first_in(&class);
    let (target, other) = (&images[0], images.iter().find(|p| size(p) != size(&images[0])).unwrap());
    let original = std::fs::read(target).unwrap();
    std::fs::copy(other, target).unwrap();
    let after = stale();
    assert_eq!(after.len(), 2 + rows.len(), "stage 1, extraction and every row of the one seed: {after:?}");
    assert!(after[0].contains("stage 1"), "{after:?}");
    std::fs::write(target, original).unwrap();
    assert!(stale().is_empty(), "the image put back: {:?}", stale());
}

fn size(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().len()
}
