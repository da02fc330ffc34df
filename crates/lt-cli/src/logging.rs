//! Logging: progress bars on a terminal, plain log lines otherwise (CI).

use std::io::IsTerminal;

use tracing_indicatif::IndicatifLayer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `filter` is used unless `RUST_LOG` is set.
pub fn init(filter: &str, plain: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(filter));
    let registry = tracing_subscriber::registry().with(filter);
    if !plain && std::io::stderr().is_terminal() {
        let bar = tracing_indicatif::style::ProgressStyle::with_template(
            "{span_child_prefix}{spinner} {msg} [{wide_bar:.cyan/blue}] {pos}/{len} {elapsed}<{eta}",
        )
        .unwrap_or_else(|_| tracing_indicatif::style::ProgressStyle::default_bar())
        .progress_chars("=> ");
        let layer = IndicatifLayer::new().with_progress_style(bar);
        let writer = layer.get_stderr_writer();
        registry
            .with(tracing_subscriber::fmt::layer().with_writer(writer).with_target(false).compact())
            .with(layer)
            .init();
    } else {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_target(false)
                    .with_ansi(false),
            )
            .init();
    }
}
