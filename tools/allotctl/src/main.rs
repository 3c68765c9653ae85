//! The `allotctl` binary: parses arguments and runs one command against the broker.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = allotctl::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("allotctl: error: cannot start: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(allotctl::run(cli)) {
        Ok(text) => {
            if !text.is_empty() {
                println!("{text}");
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("allotctl: error: {error}");
            ExitCode::FAILURE
        }
    }
}
