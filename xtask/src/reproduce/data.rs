//! The identity of a preset's data for stage 1's key, as the `lt` binary loads it (`lt data
//! fingerprint`: the split fingerprint `lt train` records, of the split's indices and labels and,
//! for an image folder, its files). Here it keeps `.stage-key` honest: a folder whose images
//! changed, or a split drawn by other rules, re-runs stage 1, where a key of the preset's text
//! alone would hand the old backbone to `lt extract`, which refuses it.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The data identity of a plan made while the data set's files are not there and no finished
/// stage 1 records them (a dry run before the first download).
const NOT_AT_HAND: &str = "(data not at hand)";

/// The identity of the data `preset_file` names (`lt data fingerprint`; its messages and any
/// download's progress go to the terminal). With `available_only` nothing is downloaded, and
/// data whose files are not there yet are `None` (the plan of a dry run before the first
/// download).
pub fn identity(lt: &Path, preset_file: &Path, available_only: bool) -> Result<Option<String>> {
    let mut args = of_preset(preset_file);
    if available_only {
        args.push("--available-only".as_ref());
    }
    read(lt, &args)
}

/// The identity the stage-1 run in `run` recorded (`lt data fingerprint --run`), if it has one.
fn recorded(lt: &Path, run: &Path) -> Result<Option<String>> {
    read(
        lt,
        &[
            "data".as_ref(),
            "fingerprint".as_ref(),
            "--available-only".as_ref(),
            "--run".as_ref(),
            run.as_os_str(),
        ],
    )
}

/// Why the data `preset_file` names cannot be had: `lt data fingerprint`'s message (where it
/// looked), or `None` where they can.
pub(super) fn why_absent(lt: &Path, preset_file: &Path) -> Option<String> {
    crate::lt_output(lt, &of_preset(preset_file), false).err().map(|e| format!("{e:#}"))
}

/// `lt data fingerprint --preset-file PRESET_FILE`'s arguments.
fn of_preset(preset_file: &Path) -> Vec<&OsStr> {
    vec!["data".as_ref(), "fingerprint".as_ref(), "--preset-file".as_ref(), preset_file.as_os_str()]
}

/// `lt data fingerprint ARGS`' identity (`None` for its `null`).
fn read(lt: &Path, args: &[&OsStr]) -> Result<Option<String>> {
    let v = crate::lt_json(lt, args, true)?;
    if v.is_null() {
        return Ok(None);
    }
    match (v["dataset"].as_str(), v["fingerprint"].as_str()) {
        (Some(name), Some(fp)) => Ok(Some(format!("{name} {fp}"))),
        _ => bail!("`lt data fingerprint` printed {v}, expected a dataset and a fingerprint"),
    }
}

/// The data a plan is made for.
pub(super) enum Data {
    /// Found where the preset looks (downloaded first where it asks), with their identity.
    Found(String),
    /// Not at hand; the identity a finished stage 1 recorded.
    Recorded(String),
    /// Not at hand, and no finished stage 1 records them.
    Absent,
}

impl Data {
    /// The identity stage 1's key holds ([`NOT_AT_HAND`] for data absent: no stage 1 is up to
    /// date under it).
    pub(super) fn id(&self) -> &str {
        match self {
            Data::Found(id) | Data::Recorded(id) => id,
            Data::Absent => NOT_AT_HAND,
        }
    }
}

/// The data `preset_file` names, as found (downloaded first with `download`). Where they are not
/// at hand and nothing is to be downloaded (the images on a disk not mounted now), as the first
/// finished stage 1 among `stage1_dirs` recorded them, so that stages that need no images (stage
/// 2, the report) still run and the finished ones stay cached; a stage 1 or an extraction that
/// must run then stops naming where it looked.
pub(super) fn find(lt: &Path, preset_file: &Path, download: bool, stage1_dirs: &[PathBuf]) -> Result<Data> {
    if let Some(id) = identity(lt, preset_file, true)? {
        return Ok(Data::Found(id));
    }
    if download {
        let id = identity(lt, preset_file, false)?.context("`lt data fingerprint` printed no fingerprint")?;
        return Ok(Data::Found(id));
    }
    // A finished stage 1's record (a run's split is written when it starts); one that cannot be
    // read (its message shown) is passed over.
    for dir in stage1_dirs.iter().filter(|d| super::state::key_file(d).exists()) {
        if let Ok(Some(id)) = recorded(lt, dir) {
            println!("the data are not at hand: planning with those {} recorded", dir.display());
            return Ok(Data::Recorded(id));
        }
    }
    Ok(Data::Absent)
}

/// Refuses a run root that holds a reproduction on another data set or data root (its
/// `preset.toml` says which): stage 1 would train again on the new data and the report replace
/// the old one, which belongs to a folder of its own.
pub(super) fn check_same_data(preset_path: &Path, preset: &toml::Value) -> Result<()> {
    let Some(old) =
        std::fs::read_to_string(preset_path).ok().and_then(|t| toml::from_str::<toml::Value>(&t).ok())
    else {
        return Ok(());
    };
    let data = |p: &toml::Value| {
        let text = |key: &str| super::get(p, &["data", key]).and_then(|v| v.as_str());
        // The same folder however it is written: relative to here, with a trailing slash or `.`.
        let root = text("data_root").map(|r| match std::path::absolute(r) {
            Ok(a) => a.components().collect::<PathBuf>(),
            Err(_) => PathBuf::from(r),
        });
        (text("dataset").map(str::to_owned), root)
    };
    let (was, is) = (data(&old), data(preset));
    if was != is {
        let show = |(set, root): &(Option<String>, Option<PathBuf>)| {
            let root = root.as_ref().map_or("its default place".into(), |r| r.display().to_string());
            format!("{} at {root}", set.as_deref().unwrap_or("synthetic"))
        };
        let run_root = preset_path.parent().unwrap_or(Path::new("."));
        bail!(
            "{} holds a reproduction on {}; this one is on {}: give it another --runs-dir, or remove {} to start over",
            run_root.display(),
            show(&was),
            show(&is),
            run_root.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same folder written another way is the same data root; another folder or data set is
    /// refused, naming both.
    #[test]
    fn a_run_root_takes_its_own_data_root_however_written() {
        let tmp = tempfile::tempdir().unwrap();
        let preset = |text: &str| toml::from_str::<toml::Value>(text).unwrap();
        let recorded = tmp.path().join("preset.toml");
        check_same_data(&recorded, &preset("[data]\ndataset = \"folder\"\n")).unwrap();
        std::fs::write(&recorded, "[data]\ndataset = \"folder\"\ndata_root = \"photos/lt\"\n").unwrap();
        let here = std::env::current_dir().unwrap();
        for same in ["photos/lt", "photos/lt/", "./photos/lt"] {
            let p = preset(&format!("[data]\ndataset = \"folder\"\ndata_root = \"{same}\"\n"));
            check_same_data(&recorded, &p).unwrap_or_else(|e| panic!("{same}: {e}"));
        }
        let absolute = format!("{}", here.join("photos/lt").display());
        check_same_data(
            &recorded,
            &preset(&format!("[data]\ndataset = \"folder\"\ndata_root = \"{absolute}\"\n")),
        )
        .unwrap();
        for other in ["[data]\ndataset = \"folder\"\ndata_root = \"photos/other\"\n", "[data]\n"] {
            let err = check_same_data(&recorded, &preset(other)).unwrap_err().to_string();
            assert!(err.contains(&absolute) && err.contains("holds a reproduction on folder at"), "{err}");
        }
    }
}
