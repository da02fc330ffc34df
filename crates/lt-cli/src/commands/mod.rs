//! One module per subcommand.

pub mod backbone;
pub mod data;
pub mod retrain;
pub mod train;
