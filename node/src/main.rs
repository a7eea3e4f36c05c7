//! `dynamo-node`: one storage node. See `dynamo-node --help`.

use clap::Parser;
use dynamo_node::config::{Args, NodeConfig};

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
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
    match runtime.block_on(dynamo_node::server::run(cfg)) {
        Ok(()) => {
            // Everything is synced and the clean-shutdown marker written. Leave without
            // running C++ static destructors: RocksDB's background threads may still hold
            // its mutexes, and destroying them aborts the process ("pthread lock: Invalid
            // argument", seen in CI), which would turn a clean stop into a crash.
            // SAFETY: _exit(2) ends the process at once; nothing after it runs.
            unsafe { libc::_exit(0) }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
