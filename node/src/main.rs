//! `dynamo-node`: one storage node. See `dynamo-node --help`.

use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use dynamo_node::config::{Args, NodeConfig};
use dynamo_node::server;
use dynamo_node::storage::Engine;

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

fn main() -> ExitCode {
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
            return ExitCode::from(2);
        }
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if cfg.runtime_threads > 0 {
        runtime.worker_threads(cfg.runtime_threads);
    }
    let runtime = runtime.enable_all().build().expect("tokio runtime");
    let engine = match server::open_engine(&cfg) {
        Ok(engine) => engine,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(1);
        }
    };
    let code = match runtime.block_on(server::run(cfg, engine.clone())) {
        // Everything is synced and the clean-shutdown marker written.
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    };
    // Tasks still holding the node (requests past the grace, replication finishing in
    // the background) end here; the last of them drops the store, which joins its
    // threads.
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
    close_engine(engine, code)
}

/// How long the runtime's leftover tasks and blocking threads get to end once the node
/// has stopped.
const RUNTIME_SHUTDOWN: Duration = Duration::from_secs(2);

/// Closes RocksDB on this thread by dropping the last handle on it, then exits with
/// `code` normally.
///
/// RocksDB must be closed, and no thread be using it, before `main` returns and C++
/// static destructors run: destroying RocksDB's statics under a running thread aborted
/// the process ("pthread lock: Invalid argument": 3 of 30 starts of a node whose port was
/// taken) or crashed it (a store writer segfaulting in libc), turning a clean stop or a
/// clear error into a crash. If something still holds the engine (the store's writer
/// held by a hung disk past the grace, see `server::run`), it cannot be closed: then the
/// process leaves at once, without running destructors. Every write is in the WAL, which
/// the next start replays, and no clean-shutdown marker was written.
fn close_engine(engine: Arc<dyn Engine>, code: u8) -> ExitCode {
    if Arc::strong_count(&engine) > 1 {
        eprintln!("error: storage is still in use by a stuck thread; exiting without closing it");
        // SAFETY: _exit(2) ends the process at once; nothing after it runs.
        unsafe { libc::_exit(i32::from(code)) }
    }
    drop(engine);
    ExitCode::from(code)
}
