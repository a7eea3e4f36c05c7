//! `dynamoctl`: the command-line client of the store.
//!
//! `get`, `put`, `delete` talk to any node; `status` shows what one node knows; `bench`
//! is the load generator; `cluster` runs a local cluster of real node processes. See
//! `dynamoctl --help`. Exit codes: 0 success, 1 `get` found no live value, 2 error.

mod cli;

use std::process::ExitCode;

use clap::Parser;

/// The same allocator as the node: the load generator shares the machine with the nodes
/// it measures, so its own CPU time is taken from theirs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args).await {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", cli::describe_error(&err));
            ExitCode::from(2)
        }
    }
}
