//! The developer binary's library: the demo (`demo`), and the command line
//! that joins the production subcommands with `dev-backend` and `demo`.
//! Nothing here ships in the relayer image.

pub mod cli;
pub mod demo;
