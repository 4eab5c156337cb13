use std::process::ExitCode;

use clap::Parser;
use tollgate_control_plane::cli::Cli;

fn main() -> ExitCode {
    tollgate_control_plane::cli::main(Cli::parse())
}
