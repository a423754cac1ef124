//! One module per subcommand: its flags and the call into its library.

pub mod q;
