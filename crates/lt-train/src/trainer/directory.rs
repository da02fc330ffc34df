//! Whether a run directory can take a run: a fresh run needs one without a run, `--resume` one
//! whose checkpoint is this run's; a refused resume says what differs.

use lt_data::DataBundle;

use crate::checkpoint;
use crate::config::TrainConfig;
use crate::error::{io_err, Result, TrainError};
use crate::run::RunDir;

/// Refuses a directory that cannot take this run: without `resume`, one holding a run; with it,
/// one without a checkpoint or whose checkpoint belongs to another configuration or data (`now`:
/// this run's, to say which settings differ).
pub(super) fn check_directory(
    dir: &RunDir,
    fingerprint: &str,
    resume: bool,
    now: (&TrainConfig, &DataBundle),
) -> Result<()> {
    let held = [dir.checkpoint(), dir.sgd(), dir.swa()].into_iter().find(|p| p.exists());
    if !resume {
        return match held {
            Some(p) => Err(TrainError::Mismatch(format!(
                "{} already holds a run ({}); pass --resume to continue it or choose another directory",
                dir.root().display(),
                p.file_name().unwrap_or_default().to_string_lossy()
            ))),
            None => Ok(()),
        };
    }
    if !dir.checkpoint().exists() {
        return Err(TrainError::Mismatch(format!(
            "--resume: {} has no checkpoint.safetensors to continue from",
            dir.root().display()
        )));
    }
    checkpoint::check_fingerprint(&dir.checkpoint(), fingerprint).map_err(|e| match e {
        TrainError::Mismatch(m) => match what_differs(dir, now.0, now.1) {
            Ok(differs) => TrainError::Mismatch(format!("{m}: {differs}")),
            Err(why) => {
                TrainError::Mismatch(format!("{m} (the run's records do not say what differs: {why})"))
            }
        },
        e => e,
    })
}

/// What differs between the run recorded in `dir` and this one: the settings (each with the
/// recorded value and this run's, defaults filled in), the data (their split fingerprints), or
/// else the initial weights the run starts from.
fn what_differs(dir: &RunDir, cfg: &TrainConfig, data: &DataBundle) -> Result<String> {
    let path = dir.config();
    let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
    let recorded: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        TrainError::Mismatch(format!("{}: not a training configuration: {e}", path.display()))
    })?;
    // As the fingerprint sees them, with their defaults.
    let changed = lt_core::diff::of_configs("train", &recorded, cfg, |c| super::fingerprinted(c).settings())
        .map_err(|e| TrainError::Config(e.to_string()))?;
    let (_, split) = lt_core::split::SplitInfo::recorded(&dir.split())?;
    let now = data.fingerprint();
    let mut parts = Vec::new();
    if !changed.is_empty() {
        parts.push(format!("the settings differ ({})", lt_core::diff::summary(&changed)));
    }
    if split != now {
        parts.push(format!(
            "the data differ (split fingerprint {}… recorded, {}… now: other images, or other data settings)",
            lt_core::fingerprint::short(&split),
            lt_core::fingerprint::short(&now)
        ));
    }
    Ok(match (parts.is_empty(), &cfg.init) {
        (false, _) => parts.join(", and "),
        (true, Some(init)) => format!(
            "the settings and the data are the same, so the initial weights differ: `{init}` now gives other weights"
        ),
        (true, None) => "the settings and the data are the same: the checkpoint was written by another version \
                         of lt, whose fingerprints were made otherwise"
            .into(),
    })
}
