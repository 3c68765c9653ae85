//! The `allot-broker` binary: parses arguments and calls the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = allot_broker::config::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = match cli.command {
        allot_broker::config::Command::Serve(args) => match args.validate() {
            Ok(config) => config,
            Err(error) => {
                eprintln!("allot-broker: error: {error}");
                return ExitCode::FAILURE;
            }
        },
        allot_broker::config::Command::Pki(command) => {
            return match allot_broker::pki_command(command) {
                Ok(written) => {
                    for line in written {
                        println!("{line}");
                    }
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("allot-broker: error: {error}");
                    ExitCode::FAILURE
                }
            };
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("allot-broker: error: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(allot_broker::serve(config, allot_api::shutdown::signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("allot-broker: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
