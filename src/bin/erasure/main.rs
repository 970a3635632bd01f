//! The `erasure` binary: the library's commands ([`erasure::cli`]) plus `erasure bench`, which
//! lives here rather than in the library because nothing but this binary runs it (it starts
//! this very binary as its intake and worker processes).

mod bench;

use clap::{Parser, Subcommand};
use erasure::cli;

#[derive(Parser, Debug)]
#[command(name = "erasure", version, about = cli::ABOUT)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    #[command(flatten)]
    Service(cli::Command),
    /// Benchmark the service against plain set-based SQL on its own database.
    Bench(bench::BenchArgs),
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    erasure::client::install_tls();
    let result = match Cli::parse().command {
        Command::Service(command) => cli::run(cli::Cli { command }).await,
        Command::Bench(args) => bench::main(args).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
