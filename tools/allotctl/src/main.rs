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
            use std::io::Write;
            if !text.is_empty() {
                let mut stdout = std::io::stdout().lock();
                // A reader that went away (`| head`) is not an error.
                if let Err(error) = writeln!(stdout, "{text}").and_then(|()| stdout.flush())
                    && error.kind() != std::io::ErrorKind::BrokenPipe
                {
                    eprintln!("allotctl: error: cannot write the answer: {error}");
                    return ExitCode::FAILURE;
                }
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("allotctl: error: {error}");
            ExitCode::FAILURE
        }
    }
}
