//! One module per subcommand.

pub mod data;
