//! The `allot-broker` binary: parses arguments and calls the library.

use std::process::ExitCode;

use clap::Parser;

/// Keeps glibc's malloc from handing each thread's heap back to the kernel and
/// asking for it again on every batch. With the defaults, a thread heap shrinks
/// whenever 128 KiB at its top are free and grows again (an `mprotect` call) on
/// the next large buffer, such as a batch's store transaction: about 1,200
/// calls a second under load, each a change to the process's memory map. Each
/// heap now keeps up to 16 MiB free. The start still gives back what loading
/// freed, with `malloc_trim`, which does not look at this threshold.
fn keep_freed_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets malloc's tuning parameters; it is called before
    // any other thread exists.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 16 << 20);
        libc::mallopt(libc::M_TOP_PAD, 1 << 20);
        // Setting the trim threshold fixes the mmap threshold too: keep buffers
        // up to 4 MiB (a batch's transaction, a page of a range) in the heap.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
    }
}

fn main() -> ExitCode {
    keep_freed_heap();
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
