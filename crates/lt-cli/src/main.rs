//! `lt`: every stage of the SRepr long-tailed pipeline as a subcommand.
//!
//! Stages exchange safetensors artifacts through a run directory; see `docs/artifacts.md`.

mod commands;
mod device;
mod logging;
mod overlay;
mod preset;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// Decoupled long-tailed classification with stochastic representations (SRepr).
#[derive(Parser)]
#[command(name = "lt", version, about, propagate_version = true)]
struct Cli {
    /// Log level filter (e.g. `info`, `debug`, `lt_train=debug`); `RUST_LOG` also works.
    #[arg(long, global = true, default_value = "info")]
    log: String,
    /// Plain log lines even on a terminal (no progress bars).
    #[arg(long, global = true)]
    plain: bool,
    /// On CUDA, choose each convolution's cuDNN algorithm by cuDNN's heuristic ranking instead
    /// of timing the candidates on first use (`cudnnFind*`, like PyTorch's `cudnn.benchmark`):
    /// the choice is then the same in every run on one GPU and cuDNN version, where timings can
    /// choose differently from run to run. Deterministic algorithms come first either way.
    #[arg(long, global = true)]
    cudnn_heuristic: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Data sets: describe a long-tailed split, write the split artifact.
    Data(commands::data::DataArgs),
    /// A preset resolved: every setting of every stage, defaults filled in, as JSON.
    Preset(commands::preset::PresetCmd),
    /// Backbones: parameter shapes, eval-mode features and logits for an input tensor.
    Backbone(commands::backbone::BackboneArgs),
    /// Stage 1: train the SGD backbone and, with SWA, the SWA backbone and SWAG statistics.
    Train(Box<commands::train::TrainArgs>),
    /// Stochastic representations: features of the SGD, SWA and M SWAG-sampled backbones.
    Extract(commands::train::ExtractArgs),
    /// Stage 2: re-train the classifier on cached features (cRT, LWS, tau-norm, LA, ..., SRepr).
    Retrain(Box<commands::retrain::RetrainArgs>),
    /// Metrics of one prediction set: accuracy by shot group, NLL, ECE, reliability diagram.
    Eval(commands::eval::EvalArgs),
    /// The report of a reproduction: mean ± std over seeds in the poster's layout, plots.
    Report(commands::eval::ReportArgs),
    /// The backbones' golden checks against PyTorch on a device (e.g. a GPU machine).
    Selftest(commands::selftest::SelftestArgs),
    /// Measurements behind `cargo xtask bench` (JSON on stdout): a backbone's step, the loader,
    /// stage 2.
    Bench(commands::bench::BenchArgs),
}

fn main() {
    // Die quietly on a closed pipe (`lt backbone info ... | head`) like other command-line tools.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // The sub-command's own matches tell which flags were given (see `overlay`).
    let sub = matches.subcommand().map(|(_, m)| m.clone()).unwrap_or_default();
    logging::init(&cli.log, cli.plain);
    lt_models::ops::set_cudnn_measured_search(!cli.cudnn_heuristic);
    let result = match cli.command {
        Command::Data(a) => commands::data::run(a),
        Command::Preset(a) => commands::preset::run(a),
        Command::Backbone(a) => commands::backbone::run(a),
        Command::Train(a) => commands::train::run_train(*a, &sub),
        Command::Extract(a) => commands::train::run_extract(a, &sub),
        Command::Retrain(a) => commands::retrain::run(*a, &sub),
        Command::Eval(a) => commands::eval::run_eval(a),
        Command::Report(a) => commands::eval::run_report(a).map(|_| ()),
        Command::Bench(a) => commands::bench::run(a),
        Command::Selftest(a) => commands::selftest::run(a, &cli.log),
    };
    if let Err(e) = result {
        eprintln!("error: {}", message(&e));
        std::process::exit(1);
    }
}

/// An error and its causes on one line, `: `-separated as `{:#}` writes them, without a cause
/// its parent's message already ends with (the project's errors write a cause either into their
/// message or as their source, a tidy test holds; others may do both).
fn message(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !parts.last().is_some_and(|p| p.ends_with(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_error_message_writes_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory (os error 2)");
        let e = lt_core::ArtifactError::Io { path: "f.safetensors".into(), error: io };
        let e = anyhow::Error::new(e).context("reading the features");
        assert_eq!(
            super::message(&e),
            "reading the features: f.safetensors: No such file or directory (os error 2)"
        );
        assert_eq!(format!("{e:#}").matches("os error 2").count(), 1, "what {{:#}} writes");
    }
}
