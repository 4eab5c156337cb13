use std::process::ExitCode;

use tollgate_control_plane::cli::Cli;

fn main() -> ExitCode {
    tollgate_control_plane::cli::main(Cli::from_command_line())
}
