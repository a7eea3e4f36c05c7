//! `dynamoctl bench`: flags of the load generator (the generator is
//! `dynamo_client::bench`).

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use dynamo_client::bench::{self, parse_duration, BenchConfig, Stop};

use super::{client_config, Cli};

/// Arguments of `bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Workers, each with one request in flight.
    #[arg(long, short = 'c', default_value_t = 16)]
    pub concurrency: usize,
    /// Distinct keys.
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    /// Bytes per key (keys look like k000000000000042).
    #[arg(long, default_value_t = 16)]
    pub key_size: usize,
    /// Bytes per value.
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// Share of operations that are gets, 0.0..=1.0 (the rest are puts).
    #[arg(long, default_value_t = 0.5)]
    pub read_ratio: f64,
    /// How long to measure (e.g. 10s, 1m).
    #[arg(long, default_value = "10s", value_parser = parse_duration, conflicts_with = "ops")]
    pub duration: Duration,
    /// Run this long first without counting (e.g. 2s): its requests are sent but appear
    /// only in the timeline, and --duration is measured after it. The first moments of a
    /// load after an idle spell are slow on their own; leave them out when comparing runs.
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    pub skip: Duration,
    /// Stop after this many operations instead of after --duration (0: only prefill).
    #[arg(long)]
    pub ops: Option<u64>,
    /// Before measuring (untimed): read every key and write it unless it holds exactly one
    /// value, so reads hit values and writes start with a context.
    #[arg(long, alias = "warmup")]
    pub prefill: bool,
    /// Target rate in operations per second over all workers (open loop): each worker sends
    /// on a fixed schedule and latency counts from when a request was due, so a stall
    /// shows in the percentiles instead of slowing the load down. Default: closed loop, as
    /// fast as the cluster answers.
    #[arg(long)]
    pub rate: Option<f64>,
    /// R for gets (default: the cluster's).
    #[arg(long)]
    pub r: Option<u32>,
    /// W for puts (default: the cluster's).
    #[arg(long)]
    pub w: Option<u32>,
    /// HTTP/2 connections per node (default 1: on a 2-core machine running the cluster too,
    /// 64 workers did better over one connection per node than over four).
    #[arg(long)]
    pub connections: Option<usize>,
    /// Send each request to the --addr nodes instead of the key's preference list (use when
    /// the addresses nodes advertise are not reachable from here, e.g. via port-forward).
    #[arg(long)]
    pub no_route: bool,
    /// Seed of the random key choices.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// No progress bar.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Also report latency over time, in slices this wide (e.g. 250ms): operations, p50,
    /// p99 and slowest of the requests sent in each slice.
    #[arg(long, value_parser = parse_duration)]
    pub timeline: Option<Duration>,
}

impl BenchArgs {
    fn config(&self) -> BenchConfig {
        BenchConfig {
            concurrency: self.concurrency,
            keys: self.keys,
            key_size: self.key_size,
            value_size: self.value_size,
            read_ratio: self.read_ratio,
            stop: match self.ops {
                Some(n) => Stop::Ops(n),
                None => Stop::After(self.duration),
            },
            prefill: self.prefill,
            rate: self.rate,
            r: self.r,
            w: self.w,
            progress: !self.quiet,
            seed: self.seed,
            timeline: self.timeline,
            skip: self.skip,
        }
    }

    /// Channels per node. One multiplexed HTTP/2 connection per node measured best here
    /// (c=64 against a local 3-node cluster on a loaded 2-core machine: 1520 ops/s with one,
    /// 1243 with four); raise it on machines with more cores.
    fn connections(&self) -> usize {
        self.connections.unwrap_or(1).max(1)
    }
}

/// Runs the bench and prints the report.
pub async fn run(cli: &Cli, args: &BenchArgs) -> anyhow::Result<ExitCode> {
    let cfg = args.config();
    cfg.validate().map_err(anyhow::Error::msg)?;
    let mut config = client_config(cli)?;
    config.channels_per_node = args.connections();
    config.route_by_key = !args.no_route;
    let client = config.connect().await?;
    let outcome = bench::run(&client, &cfg).await?;
    if let Some(t) = outcome.prefill {
        eprintln!("prefill: {} keys in {:.2} s", cfg.keys, t.as_secs_f64());
    }
    if args.json {
        let mut v = serde_json::to_value(&outcome.report)?;
        v["prefill_seconds"] = outcome.prefill.map(|t| t.as_secs_f64()).into();
        v["context_reads"] = outcome.context_reads.into();
        v["config"]["connections_per_node"] = args.connections().into();
        v["config"]["route_by_key"] = (!args.no_route).into();
        println!("{v}");
    } else {
        print!("{}", outcome.report.to_text());
        if let Some(slices) = &outcome.report.timeline {
            print!("{}", dynamo_client::bench::timeline::to_text(slices));
        }
        if outcome.context_reads > 0 {
            println!(
                "context reads (untimed gets before a key's first put): {}",
                outcome.context_reads
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> BenchArgs {
        let mut all = vec!["dynamoctl", "bench"];
        all.extend_from_slice(args);
        match Cli::parse_from(all).command {
            super::super::Command::Bench(b) => b,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let b = parse(&[]);
        let cfg = b.config();
        assert_eq!(cfg.concurrency, 16);
        assert_eq!(cfg.keys, 10_000);
        assert_eq!((cfg.key_size, cfg.value_size), (16, 100));
        assert_eq!(cfg.read_ratio, 0.5);
        assert_eq!(cfg.stop, Stop::After(Duration::from_secs(10)));
        assert!(!cfg.prefill);
        assert_eq!(b.connections(), 1);
    }

    #[test]
    fn ops_and_warmup() {
        let b = parse(&["--ops", "500", "--warmup", "-c", "64"]);
        assert_eq!(b.config().stop, Stop::Ops(500));
        assert!(b.config().prefill);
        assert_eq!(b.connections(), 1);
        assert_eq!(parse(&["--connections", "3"]).connections(), 3);
        assert!(
            Cli::try_parse_from(["dynamoctl", "bench", "--ops", "1", "--duration", "1s"]).is_err()
        );
    }
}
