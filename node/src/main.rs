//! `dynamo-node`: one storage node. See `dynamo-node --help`.

use std::io::IsTerminal as _;

use clap::Parser;
use dynamo_node::config::{Args, NodeConfig};

/// mimalloc instead of glibc's malloc for the node's own allocations (RocksDB's C++ keeps
/// glibc's). Profiled under synced puts at 64 clients, glibc's malloc and free took ~11%
/// of the machine's CPU, much of it consolidating and unlinking free chunks.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Colour codes in the log only on a terminal (and not with `NO_COLOR`): in a pod, a file
/// or the local cluster's prefixed output they are noise for `kubectl logs` and log
/// shippers.
fn log_in_color() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(log_in_color())
        .init();
    let cfg = match NodeConfig::load(Args::parse()) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if cfg.runtime_threads > 0 {
        runtime.worker_threads(cfg.runtime_threads);
    }
    let runtime = runtime.enable_all().build().expect("tokio runtime");
    let code = match runtime.block_on(dynamo_node::server::run(cfg)) {
        // Everything is synced and the clean-shutdown marker written.
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    };
    // Leave without running C++ static destructors, on success and on failure alike:
    // RocksDB's background threads, and the store's writer closing the database once its
    // queue is dropped, may still be running. Destroying RocksDB's statics under them
    // aborts the process ("pthread lock: Invalid argument": 3 of 30 starts of a node
    // whose port was taken) or crashes it (a store writer segfaulting in libc during a CI
    // run), turning a clean stop or a clear error into a crash. Every write is in the
    // WAL by then, which the next start replays.
    // SAFETY: _exit(2) ends the process at once; nothing after it runs.
    unsafe { libc::_exit(code) }
}
