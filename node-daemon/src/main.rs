//! The `allot-node` binary: parses arguments, prepares the environment, and calls
//! the library.

use std::io::Write;
use std::process::ExitCode;

use allot_node::cli::{Cli, Command};
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Inventory(args) => {
            let plan = match args.hardware.plan() {
                Ok(plan) => plan,
                Err(error) => return fail(&error),
            };
            for (name, value) in &plan.environment {
                // SAFETY: set_var is unsound only while other threads read the
                // environment; this runs before anything starts a thread.
                unsafe { std::env::set_var(name, value) };
            }
            match allot_node::cli::inventory(&plan, args.output) {
                Ok(text) => print(&text),
                Err(error) => fail(&error),
            }
        }
    }
}

/// Writes the result; a reader that went away early (`| head`) is not an error.
fn print(text: &str) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    match writeln!(stdout, "{text}").and_then(|()| stdout.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(error) => fail(&error),
    }
}

fn fail(error: &dyn std::error::Error) -> ExitCode {
    eprintln!("allot-node: error: {error}");
    ExitCode::FAILURE
}
