//! `lt selftest`: the backbones' golden checks against PyTorch on any device (the fixtures of
//! `crates/lt-models/tests/golden/`, read from the working tree), then the mixed-precision
//! checks (bf16 against f32 on the device), the taped-executor checks (its training steps
//! against candle's autograd on the device), the frozen-snapshot checks (a snapshot against its
//! model's evaluation), the optimiser check (SGD's in-place passes against its tensor ops on
//! the device), the repeatability checks (training steps run twice from one seed give the
//! same bits) and the loader check (batches its workers make on the device, read the moment they
//! arrive, against the host's). Every check runs, whatever fails before it; the summary counts them all, each
//! kind on its own line.
//!
//! Each [`Group`] of checks runs in a process of its own ([`child`]): on a GPU, a kernel that
//! faults leaves the CUDA context unusable for the rest of its process (a "sticky" error), and a
//! crash or a hang ends the process. Isolated, such a fault fails its own group, which the
//! summary names, and the other groups still run and count. `--in-process` runs them all in this
//! one (a debugger, a profiler).

mod checks;
mod child;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

/// `lt selftest`
#[derive(Args)]
pub struct SelftestArgs {
    #[command(flatten)]
    device: crate::device::DeviceArg,
    /// Directory of the golden fixtures.
    #[arg(long, default_value = "crates/lt-models/tests/golden")]
    fixtures: PathBuf,
    /// The groups of checks to run (comma-separated; default all of them).
    #[arg(long, value_delimiter = ',')]
    only: Vec<Group>,
    /// Run every group in this process instead of one process each.
    #[arg(long)]
    in_process: bool,
    /// Seconds a group's process may run before it is stopped and its group failed.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    group_timeout: u64,
    /// Print each group's counts as one machine-readable line (how a group's process reports
    /// to `lt selftest`).
    #[arg(long, hide = true)]
    result_line: bool,
}

/// One group of checks: what one process runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Group {
    /// ResNet-32's golden checks on the project's ops.
    GoldenResnet32Fast,
    /// ResNet-32's golden checks on stock candle's ops.
    GoldenResnet32Candle,
    /// ResNet-50's golden checks on the project's ops.
    GoldenResnet50Fast,
    /// ResNet-50's golden checks on stock candle's ops.
    GoldenResnet50Candle,
    /// bf16 mixed precision against f32 on the device.
    Mixed,
    /// The taped executor's training steps against candle's autograd.
    Taped,
    /// A frozen snapshot against its model's evaluation.
    Frozen,
    /// SGD's in-place passes against its tensor ops.
    Optimiser,
    /// A few training steps run twice from one seed: the same bits.
    Repeatable,
    /// The loader's batches made on the device against the host's.
    Loader,
}

impl Group {
    /// Every group, in the order they run (as declared).
    fn all() -> &'static [Group] {
        Group::value_variants()
    }

    /// The name `--only` takes.
    fn name(self) -> String {
        self.to_possible_value().map(|v| v.get_name().to_string()).unwrap_or_else(|| format!("{self:?}"))
    }

    /// Its kind of check, named by the noun of the kind's summary line,
    /// `N/M <kind> passed on <device>`.
    fn kind(self) -> &'static str {
        match self {
            Group::GoldenResnet32Fast
            | Group::GoldenResnet32Candle
            | Group::GoldenResnet50Fast
            | Group::GoldenResnet50Candle => "checks",
            Group::Mixed => "mixed-precision checks",
            Group::Taped => "taped-executor checks",
            Group::Frozen => "frozen-snapshot checks",
            Group::Optimiser => "optimiser checks",
            Group::Repeatable => "repeatability checks",
            Group::Loader => "loader checks",
        }
    }
}

/// Every kind of check ([`Group::kind`]), in the order of its first group.
fn kinds() -> Vec<&'static str> {
    let mut kinds = Vec::new();
    for g in Group::all() {
        if !kinds.contains(&g.kind()) {
            kinds.push(g.kind());
        }
    }
    kinds
}

/// The counts of one group (or several): checks run, checks failed, and the runs that could not
/// start or end (named).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Tally {
    /// Checks run.
    pub total: usize,
    /// Checks that failed.
    pub failed: usize,
    /// Runs that could not start, or a group's process that ended without its counts.
    pub broken: Vec<String>,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.total += other.total;
        self.failed += other.failed;
        self.broken.extend(other.broken);
    }
}

/// Runs `lt selftest`. `log` is the log filter, passed on to the groups' processes.
pub fn run(a: SelftestArgs, log: &str) -> Result<()> {
    // Opened here in any case, so that a device that cannot open fails once, with its reason.
    let device = a.device.open()?;
    let in_process = a.in_process.then_some(device);
    let groups = if a.only.is_empty() { Group::all().to_vec() } else { a.only.clone() };
    let mut tallies: Vec<(&str, Tally)> = kinds().into_iter().map(|k| (k, Tally::default())).collect();
    for (i, &g) in groups.iter().enumerate() {
        let t = match &in_process {
            Some(device) => checks::run_group(g, device, &a.fixtures),
            None => run_isolated(&a, g, log)?,
        };
        if a.result_line {
            println!("{}", child::result_line(&t)?);
            continue;
        }
        let Some((kind, tally)) = tallies.iter_mut().find(|(k, _)| *k == g.kind()) else { continue };
        tally.add(t);
        // A kind's summary line follows its last group.
        if groups[i + 1..].iter().all(|g| g.kind() != *kind) {
            println!("{}/{} {} passed on {}", tally.total - tally.failed, tally.total, kind, a.device.device);
        }
    }
    if a.result_line {
        return Ok(());
    }
    let broken: Vec<&str> = tallies.iter().flat_map(|(_, t)| t.broken.iter().map(String::as_str)).collect();
    if !broken.is_empty() {
        println!("runs that could not start or end: {}", broken.join(", "));
    }
    let failed: Vec<String> =
        tallies.iter().filter(|(_, t)| t.failed > 0).map(|(k, t)| format!("{} {k}", t.failed)).collect();
    if !failed.is_empty() || !broken.is_empty() {
        let failed = if failed.is_empty() { "no check".to_string() } else { failed.join(", ") };
        bail!("{failed} failed, {} run(s) broken (see the FAIL lines above)", broken.len());
    }
    Ok(())
}

/// Runs group `g` in a process of its own (this executable, `--only g --in-process
/// --result-line`, and `--cudnn-heuristic` when this process has it), its lines passed through:
/// the group's counts, or a broken run that names how its process ended.
fn run_isolated(a: &SelftestArgs, g: Group, log: &str) -> Result<Tally> {
    let exe = std::env::current_exe().context("locating the lt executable to run a group of checks")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["--log", log, "--plain"]);
    if !lt_models::ops::cudnn_measured_search() {
        cmd.arg("--cudnn-heuristic");
    }
    cmd.args(["selftest", "--device", &a.device.device, "--fixtures"]).arg(&a.fixtures).args([
        "--only",
        &g.name(),
        "--in-process",
        "--result-line",
    ]);
    let timeout = Duration::from_secs(a.group_timeout);
    let name = g.name();
    let mut out = std::io::stdout().lock();
    let outcome = child::run(cmd, timeout, &mut out)
        .with_context(|| format!("running the {name} checks in a process of their own"))?;
    Ok(outcome.into_tally(&name, timeout, &mut out)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `scripts/gpu_check.sh` judges each kind by its summary line and its groups' names
    /// (`kind_status "LABEL" GROUPS ...`): every kind's label and every group's name must be
    /// what the script reads, or a renamed one would go unread on the GPU machine.
    #[test]
    fn the_gpu_check_reads_every_kind_and_group() {
        let script =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/gpu_check.sh"))
                .expect("scripts/gpu_check.sh");
        let calls: Vec<(&str, &str)> = script
            .lines()
            .filter_map(|l| l.trim().strip_prefix("kind_status \""))
            .filter_map(|rest| {
                let (label, rest) = rest.split_once('"')?;
                Some((label, rest.split_whitespace().next()?.trim_matches('\'')))
            })
            .collect();
        for kind in kinds() {
            let Some(&(_, groups)) = calls.iter().find(|(label, _)| *label == kind) else {
                panic!("gpu_check.sh has no kind_status call for \"{kind}\"");
            };
            for g in Group::all().iter().filter(|g| g.kind() == kind) {
                let name = g.name();
                let matched = match groups.strip_suffix("[a-z0-9-]+") {
                    Some(prefix) => name.starts_with(prefix),
                    None => name == groups,
                };
                assert!(matched, "gpu_check.sh reads the groups {groups:?} for \"{kind}\", not {name}");
            }
        }
        assert_eq!(calls.len(), kinds().len(), "{calls:?}");
    }
}
