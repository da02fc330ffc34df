//! One module per subcommand.

pub mod backbone;
pub mod bench;
pub mod bench_features;
pub mod bench_loader;
pub mod data;
pub mod eval;
pub mod preset;
pub mod retrain;
pub mod selftest;
pub mod train;
