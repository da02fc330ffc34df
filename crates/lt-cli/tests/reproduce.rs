//! End to end: `cargo xtask reproduce` on the tiny preset runs every stage and method and writes
//! the report; a second invocation skips everything; a misspelled setting or another data root is
//! refused before anything changes; changing a stage-2 knob re-runs only stage 2.

use std::path::PathBuf;

/// The `lt` binary of this build.
fn lt_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_lt"))
}

fn options(runs: &std::path::Path, preset_file: Option<PathBuf>) -> xtask::reproduce::Options {
    xtask::reproduce::Options {
        preset: "tiny".into(),
        preset_file,
        seeds: None,
        data_root: None,
        download: false,
        init: None,
        runs_dir: runs.to_path_buf(),
        device: "cpu".into(),
        dry_run: false,
        lt: Some(lt_binary()),
    }
}

#[test]
fn reproduce_tiny_preset_end_to_end_and_incrementally() {
    let root = xtask::workspace_root();
    let runs = tempfile::tempdir().unwrap();
    let first = xtask::reproduce::run(&root, &options(runs.path(), None)).unwrap();
    let rows = xtask::reproduce::stage2_rows(&lt_binary()).unwrap();
    assert_eq!(rows.len(), lt_retrain::rows::ROWS.len(), "the plan is the binary's rows");
    let per_seed = 2 + rows.len();
    assert_eq!(first.ran.len(), 2 * per_seed, "every stage of both seeds ran");
    let report = std::fs::read_to_string(&first.report).unwrap();
    for row in [
        "| SGD | - |",
        "| SGD | cRT |",
        "| SGD | LWS |",
        "| SGD | tau-norm |",
        "| SGD | LA |",
        "| SGD | DisAlign |",
        "| SWA | Balanced Softmax |",
        "| SWA | LA (post-hoc) |",
        "| SWA | + stochastic repr. (b) |",
        "| SWA | SRepr |",
        "| SWA | SWAG ensemble of (b), M passes |",
        "| SWA | SRepr, frozen (b) teacher |",
    ] {
        assert!(report.contains(row), "row {row} missing from\n{report}");
    }
    assert!(report.contains("± "), "{report}");
    let plots = first.report.parent().unwrap().join("plots");
    for f in [
        "per_class_accuracy.png",
        "per_class_accuracy.svg",
        "dispersion_representation.png",
        "reliability-swa-srepr.png",
    ] {
        assert!(plots.join(f).exists(), "{f} missing");
    }

    // The report read the layout the plan wrote, with lt's file names.
    assert_eq!(xtask::reproduce::FEATURES_FILE, lt_core::layout::FEATURES_FILE);
    assert_eq!(xtask::reproduce::CHECKPOINT_FILE, lt_core::layout::CHECKPOINT_FILE);
    let layout = lt_metrics::report::LAYOUT;
    assert!(layout
        .row_dir(runs.path().join("tiny").as_path(), 1, "swa-srepr")
        .join(layout.predictions)
        .exists());
    assert!(layout.stage1_dir(runs.path().join("tiny").as_path(), 0).join(layout.features).exists());

    // While another reproduction holds the run root, this one stops before touching it.
    let held = xtask::reproduce::lock_root(&runs.path().join("tiny")).unwrap();
    let err = xtask::reproduce::run(&root, &options(runs.path(), None)).unwrap_err().to_string();
    assert!(err.contains("in use by another reproduction"), "{err}");
    drop(held);

    // Nothing changed: everything is skipped.
    let second = xtask::reproduce::run(&root, &options(runs.path(), None)).unwrap();
    assert!(second.ran.is_empty(), "re-ran {:?}", second.ran);

    // A misspelled setting is named in the user's file, at its line, before the run root
    // changes; so is another data root than the run root's reproduction used.
    let text = std::fs::read_to_string(root.join("presets/tiny.toml")).unwrap();
    let recorded = std::fs::read_to_string(runs.path().join("tiny/preset.toml")).unwrap();
    let typo = runs.path().join("typo.toml");
    std::fs::write(&typo, text.replace("[extract]\n", "[extract]\nsampels = 2\n")).unwrap();
    let err =
        format!("{:#}", xtask::reproduce::run(&root, &options(runs.path(), Some(typo.clone()))).unwrap_err());
    let line = text.lines().position(|l| l == "[extract]").unwrap() + 2;
    assert!(err.contains(&typo.display().to_string()) && err.contains("sampels"), "{err}");
    assert!(err.contains(&format!("line {line}")), "line {line}: {err}");
    // A data root for the synthetic set, which reads none, is refused before it is recorded.
    let elsewhere =
        xtask::reproduce::Options { data_root: Some("elsewhere".into()), ..options(runs.path(), None) };
    let err = format!("{:#}", xtask::reproduce::run(&root, &elsewhere).unwrap_err());
    assert!(
        err.contains("with this command's --data-root")
            && err.contains("data.data_root must be left unset for synthetic"),
        "{err}"
    );
    let data_section = "[data]\ndataset = \"synthetic\"\nimbalance = 10.0\nsynthetic_classes = 4\nsynthetic_n_max = 40\nsynthetic_size = 16\n";
    assert!(text.contains(data_section), "the tiny preset's [data] moved");
    let other_data = runs.path().join("other-data.toml");
    std::fs::write(&other_data, text.replace(data_section, "[data]\ndataset = \"fmnist-lt\"\n")).unwrap();
    let err =
        format!("{:#}", xtask::reproduce::run(&root, &options(runs.path(), Some(other_data))).unwrap_err());
    assert!(err.contains("holds a reproduction on synthetic") && err.contains("fmnist-lt"), "{err}");
    assert_eq!(std::fs::read_to_string(runs.path().join("tiny/preset.toml")).unwrap(), recorded);

    // One stage-2 knob changed: stage 1 and extraction are reused, stage 2 re-runs.
    let edited = text.replace("[retrain]\nepochs = 4", "[retrain]\nepochs = 3");
    assert_ne!(edited, text, "the tiny preset's [retrain] epochs moved");
    let file = runs.path().join("edited.toml");
    std::fs::write(&file, edited).unwrap();
    let third = xtask::reproduce::run(&root, &options(runs.path(), Some(file.clone()))).unwrap();
    assert_eq!(third.ran.len(), 2 * rows.len(), "{:?}", third.ran);
    assert!(third.ran.iter().all(|s| s.contains("stage 2")), "{:?}", third.ran);

    // One extraction knob changed: stage 1 is reused, the features are replaced (`lt extract
    // --replace`) and stage 2 re-runs on them; the report takes the new runs.
    let rescaled = std::fs::read_to_string(&file).unwrap().replacen("scale = 0.5\n", "scale = 0.25\n", 1);
    assert!(rescaled.contains("scale = 0.25\n"), "{rescaled}");
    std::fs::write(&file, rescaled).unwrap();
    let rescaled = xtask::reproduce::run(&root, &options(runs.path(), Some(file.clone()))).unwrap();
    assert_eq!(rescaled.ran.len(), 2 * (per_seed - 1), "{:?}", rescaled.ran);
    assert!(rescaled.ran.iter().all(|s| !s.contains("stage 1")), "{:?}", rescaled.ran);

    // Another number of loader threads (a machine with other cores), or downloading what is
    // missing, re-runs nothing.
    let threads = std::fs::read_to_string(&file).unwrap().replace("[train]\n", "[train]\nworkers = 3\n");
    let threads = threads.replace("[extract]\n", "[extract]\nworkers = 3\n");
    let threads = threads.replace("[data]\n", "[data]\ndownload = true\n");
    assert_eq!(threads.matches("workers = 3").count() + threads.matches("download = true").count(), 3);
    std::fs::write(&file, threads).unwrap();
    let fourth = xtask::reproduce::run(&root, &options(runs.path(), Some(file.clone()))).unwrap();
    assert!(fourth.ran.is_empty(), "re-ran {:?}", fourth.ran);

    // A stage 1 interrupted under other inputs starts afresh: here seed 0's, trained with one
    // more epoch and left as if interrupted (its checkpoint, its key pending), which `lt train
    // --resume` would refuse as another run's.
    let longer = std::fs::read_to_string(&file).unwrap().replace("[train]\n", "[train]\nepochs = 6\n");
    let longer = longer.replacen("epochs = 5\n", "", 1);
    assert!(longer.contains("epochs = 6") && !longer.contains("epochs = 5"), "{longer}");
    let other = runs.path().join("longer.toml");
    std::fs::write(&other, longer).unwrap();
    let fifth = xtask::reproduce::run(&root, &options(runs.path(), Some(other))).unwrap();
    assert_eq!(fifth.ran.len(), 2 * per_seed, "{:?}", fifth.ran);
    let stage1 = layout.stage1_dir(runs.path().join("tiny").as_path(), 0);
    assert!(stage1.join(lt_core::layout::CHECKPOINT_FILE).exists());
    std::fs::rename(stage1.join(".stage-key"), stage1.join(".stage-key.pending")).unwrap();
    let sixth = xtask::reproduce::run(&root, &options(runs.path(), Some(file))).unwrap();
    assert!(sixth.ran[0].contains("seed 0: stage 1"), "{:?}", sixth.ran);
    assert!(
        !stage1.join(".stage-key.pending").exists(),
        "the pending key is removed when the stage succeeds"
    );
}

/// The estimates' inputs come from `lt preset` (the binary's defaults, not xtask's): every path
/// xtask reads is there, for every embedded preset, with the values of the preset file.
#[test]
fn the_estimates_read_every_setting_they_need_from_lt_preset() {
    for name in ["synthetic", "tiny", "fmnist-lt", "cifar100-lt", "imagenet-lt"] {
        let resolved = xtask::lt_json(&lt_binary(), &["preset", "--preset", name], false).unwrap();
        let setup = xtask::estimate::setup(&resolved).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let recipe = xtask::estimate::recipe(&resolved).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let preset: toml::Value = toml::from_str(
            &std::fs::read_to_string(xtask::workspace_root().join(format!("presets/{name}.toml"))).unwrap(),
        )
        .unwrap();
        let int = |section: &str, key: &str| preset[section][key].as_integer().unwrap() as usize;
        assert_eq!(
            (setup.arch.as_str(), setup.batch),
            (preset["train"]["arch"].as_str().unwrap(), int("train", "batch_size"))
        );
        assert_eq!(recipe.epochs, int("train", "epochs"), "{name}");
        assert!(setup.workers.iter().all(|&w| w >= 1), "{name}: {setup:?}");
    }
}

/// A preset name that is no file in `presets/` is an error naming the file it looked for and
/// the presets there, in order.
#[test]
fn an_unknown_preset_names_the_known_ones() {
    let runs = tempfile::tempdir().unwrap();
    let opts = xtask::reproduce::Options { preset: "cifar10-lt-typo".into(), ..options(runs.path(), None) };
    let err = xtask::reproduce::load_preset(&xtask::workspace_root(), &opts).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("presets/cifar10-lt-typo.toml"), "{msg}");
    let known = msg.split("known presets: ").nth(1).and_then(|r| r.split(')').next()).unwrap_or_default();
    let names: Vec<&str> = known.split(", ").collect();
    assert!(names.contains(&"tiny") && names.contains(&"synthetic"), "{msg}");
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "{msg}");
    // Nothing was written.
    assert_eq!(std::fs::read_dir(runs.path()).unwrap().count(), 0);
}
