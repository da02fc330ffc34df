//! One module per subcommand.

pub mod backbone;
pub mod data;
pub mod eval;
pub mod retrain;
pub mod train;
