//! One module per subcommand: its flags and the call into its library.

pub mod flags;
pub mod gateway;
pub mod lb;
pub mod q;
pub mod service;
