//! What a dry run prints: the plan, with each stage's estimated time and disk measured on this
//! machine.

use std::path::{Path, PathBuf};

use anyhow::Result;

use super::data::{find, why_absent, Data};
use super::{is_done, resumes, Stage};

/// The stages `plan` makes of the resolved preset `resolved` for its data as a run would find
/// them (without downloading; see [`find`]), and their estimated costs where the data are at
/// hand. Nothing is written under the run directory: the resolved preset goes to a temporary file
/// for `lt`.
pub(super) fn plan_and_costs(
    lt: &Path,
    resolved: &str,
    (device, download): (&str, bool),
    stage1_dirs: &[PathBuf],
    plan: impl FnOnce(&str) -> Result<Vec<Stage>>,
) -> Result<(Vec<Stage>, Option<[crate::estimate::Cost; 3]>)> {
    super::with_preset_file(resolved, |tmp| {
        let data = find(lt, tmp, false, stage1_dirs)?;
        let stages = plan(data.id())?;
        let costs = match data {
            Data::Found(_) => estimate_costs(lt, tmp, device),
            Data::Recorded(_) | Data::Absent => {
                if download {
                    println!(
                        "the data are not at hand yet: the run downloads them first where the data set can be \
                         downloaded (an image folder, ImageNet-LT or iNaturalist stops instead, naming where it \
                         looked); no estimates without them"
                    );
                } else {
                    println!(
                        "the data are not at hand: a stage 1 or extraction that must run stops here, as `lt` \
                         says: {}; no estimates without them",
                        why_absent(lt, tmp).unwrap_or_else(|| "(they were found on a second look)".into())
                    );
                }
                None
            }
        };
        Ok((stages, costs))
    })
}

/// Per kind of stage (`train`, `extract`, `retrain`), its estimated cost on this machine; `None`
/// (with the reason printed) when the measurement failed.
fn estimate_costs(lt: &Path, preset_file: &Path, device: &str) -> Option<[crate::estimate::Cost; 3]> {
    match measured_costs(lt, preset_file, device) {
        Ok(costs) => Some(costs),
        Err(e) => {
            println!("no estimates: {e:#}");
            None
        }
    }
}

/// [`estimate_costs`]: the preset as `lt preset` resolves it (every setting, the binary's
/// defaults filled in), a few measured steps, and the estimates.
fn measured_costs(lt: &Path, preset_file: &Path, device: &str) -> Result<[crate::estimate::Cost; 3]> {
    use crate::estimate as est;
    let resolved =
        crate::lt_json(lt, &["preset".as_ref(), "--preset-file".as_ref(), preset_file.as_os_str()], false)?;
    let setup = est::setup(&resolved)?;
    let r = est::recipe(&resolved)?;
    println!(
        "measuring a few steps of {} ({}) and the loader on {device} for the estimates ...",
        setup.arch, setup.precision
    );
    let i = est::measure(lt, preset_file, &setup, device)?;
    println!(
        "measured: {:.0} training and {:.0} inference images/s at {}x{}; {} parameters; {} training / {} validation / {} test images",
        i.train_ips, i.eval_ips, i.size, i.size, i.params, i.images[0], i.images[1], i.images[2]
    );
    let pace = |loader: f64, compute: f64| if loader < compute { " (sets the pace)" } else { "" };
    println!(
        "loader: {:.0} training{} and {:.0} evaluation{} images/s",
        i.loader_train_ips,
        pace(i.loader_train_ips, i.train_ips),
        i.loader_eval_ips,
        pace(i.loader_eval_ips, i.eval_ips)
    );
    Ok([est::stage1(&i, &r), est::extract(&i, &r), est::retrain_row(&i, &r)])
}

/// Prints the plan: every stage, whether it is cached, its command line and, with `costs`, its
/// estimated time and disk.
pub(super) fn print_plan(
    name: &str,
    stages: &[Stage],
    run_root: &Path,
    report: &Path,
    costs: Option<&[crate::estimate::Cost; 3]>,
) {
    use crate::estimate::{format_bytes, format_seconds};
    println!(
        "preset {name}: {} stages into {} (their commands read {}, which the run writes: the preset resolved)",
        stages.len() + 1,
        run_root.display(),
        run_root.join(super::PRESET_FILE).display()
    );
    let (mut total_s, mut total_b) = (0.0, 0.0);
    for s in stages {
        let cost = costs.and_then(|c| match s.args.first().map(String::as_str) {
            Some("train") => Some(c[0]),
            Some("extract") => Some(c[1]),
            Some("retrain") => Some(c[2]),
            _ => None,
        });
        let est = match cost {
            Some(c) if !is_done(s) => {
                total_s += c.seconds;
                total_b += c.bytes;
                format!("  (~{}, {})", format_seconds(c.seconds), format_bytes(c.bytes))
            }
            Some(c) => format!("  ({} on disk)", format_bytes(c.bytes)),
            None => String::new(),
        };
        let state = if is_done(s) {
            "cached"
        } else if resumes(s) {
            "resumes"
        } else {
            "runs"
        };
        println!("[{state:>7}] {}{est}\n          lt {}", s.name, s.args.join(" "));
    }
    if costs.is_some() {
        println!(
            "estimated: ~{} and {} of disk for what runs (stage 2 rows at least: a validation search fits several times)",
            format_seconds(total_s),
            format_bytes(total_b)
        );
    }
    println!(
        "[   runs] report\n          lt report --runs {} --out {}",
        run_root.display(),
        report.display()
    );
}
