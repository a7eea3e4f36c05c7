//! Command-line arguments of `dynamoctl` and the dispatch to each subcommand.

mod bench;
mod change;
mod cluster;
mod kv;
mod repair;
mod status;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use dynamo_client::bench::parse_duration;
use dynamo_client::{Client, ClientConfig, TlsFiles};

/// Command-line client of the Dynamo-style key-value store.
#[derive(Debug, Parser)]
#[command(name = "dynamoctl", version, about, propagate_version = true)]
pub struct Cli {
    /// Node gRPC address(es), host:port; repeat the flag or separate with commas. Requests
    /// go to any of them (round-robin, failing over when one is unreachable).
    #[arg(
        long,
        global = true,
        env = "DYNAMO_ADDR",
        value_delimiter = ',',
        default_value = "127.0.0.1:7101"
    )]
    pub addr: Vec<String>,

    /// Time allowed for one request (e.g. 500ms, 10s).
    #[arg(long, global = true, env = "DYNAMO_TIMEOUT", default_value = "10s", value_parser = parse_timeout)]
    pub timeout: Duration,

    /// Connect with TLS, verifying nodes against this CA bundle (PEM).
    #[arg(long, global = true, env = "DYNAMO_CA")]
    pub ca: Option<PathBuf>,

    /// Client certificate (PEM) for mutual TLS: needed on the peer port (`change`,
    /// `repair`), and names the user on the client port. Needs --ca and --key.
    #[arg(
        long = "cert",
        id = "tls_cert",
        global = true,
        env = "DYNAMO_CERT",
        requires = "tls_key"
    )]
    pub cert: Option<PathBuf>,

    /// The client certificate's private key (PEM).
    #[arg(
        long = "key",
        id = "tls_key",
        global = true,
        env = "DYNAMO_KEY",
        requires = "tls_cert"
    )]
    pub key: Option<PathBuf>,

    /// A file holding a bearer token to send with every request (or set DYNAMO_TOKEN to
    /// the token: it is never taken on the command line, where `ps` shows it).
    #[arg(long, global = true, env = "DYNAMO_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Read a key: every sibling, the replies, and the context for the next write.
    Get(kv::GetArgs),
    /// Write a value (from the argument, --file, or stdin), superseding --context.
    Put(kv::PutArgs),
    /// Delete what --context covers, or what a read sees without it (writes a tombstone).
    Delete(kv::DeleteArgs),
    /// Show a node's identity, the partition map, member health and pending hints.
    Status(status::StatusArgs),
    /// Compare replicas' Merkle trees now and join what differs (anti-entropy).
    Repair(repair::RepairArgs),
    /// Load generator: throughput and latency percentiles of gets and puts.
    Bench(bench::BenchArgs),
    /// Run a local cluster of dynamo-node processes until Ctrl-C.
    Cluster(cluster::ClusterArgs),
    /// Change the members of a running cluster: plan, apply (commit, move, finalize),
    /// status, finalize, abort.
    Change(change::ChangeArgs),
}

/// Runs the chosen subcommand.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Get(ref args) => kv::get(&connect(&cli).await?, args).await,
        Command::Put(ref args) => kv::put(&connect(&cli).await?, args).await,
        Command::Delete(ref args) => kv::delete(&connect(&cli).await?, args).await,
        Command::Status(ref args) => status::run(&cli, args).await,
        Command::Repair(ref args) => repair::run(&cli, args).await,
        Command::Bench(ref args) => bench::run(&cli, args).await,
        Command::Cluster(ref args) => cluster::run(args).await,
        Command::Change(ref args) => change::run(&cli, args).await,
    }
}

/// A request timeout: a duration above zero.
fn parse_timeout(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        d if d.is_zero() => Err("a timeout must be more than 0".into()),
        d => Ok(d),
    }
}

/// The client configuration the global flags describe.
pub fn client_config(cli: &Cli) -> anyhow::Result<ClientConfig> {
    let mut config = ClientConfig::new(&cli.addr);
    config.request_timeout = cli.timeout;
    match (&cli.ca, &cli.cert) {
        (Some(ca), cert) => {
            let files = TlsFiles {
                ca: ca.clone(),
                cert: cert.clone(),
                key: cli.key.clone(),
            };
            config = config.with_tls(&files, Some(Duration::from_secs(10)))?;
        }
        (None, Some(_)) => anyhow::bail!(
            "--cert needs --ca (the CA bundle that verifies the nodes): mutual TLS is TLS"
        ),
        (None, None) => {}
    }
    let token =
        match (std::env::var("DYNAMO_TOKEN").ok(), &cli.token_file) {
            (Some(token), _) if !token.trim().is_empty() => Some(token),
            (_, Some(path)) => Some(std::fs::read_to_string(path).map_err(|e| {
                anyhow::anyhow!("cannot read the token file {}: {e}", path.display())
            })?),
            _ => None,
        };
    if let Some(token) = token {
        config = config.with_token(&token)?;
    }
    Ok(config)
}

async fn connect(cli: &Cli) -> anyhow::Result<Client> {
    Ok(client_config(cli)?.connect().await?)
}

/// `<CODE>: <message>` for client errors, the error chain for others.
pub fn describe_error(err: &anyhow::Error) -> String {
    match err.downcast_ref::<dynamo_client::Error>() {
        Some(e) => format!("{}: {}", e.category(), e.message()),
        None => format!("{err:#}"),
    }
}

/// A value as text: itself when it is UTF-8, otherwise its base64 (marked as such).
pub fn show_bytes(bytes: &[u8]) -> String {
    use base64::Engine as _;
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_string(),
        Err(_) => format!(
            "base64:{}",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn addresses_split_on_commas_and_repeat() {
        let cli = Cli::parse_from(["dynamoctl", "--addr", "a:1,b:2", "--addr", "c:3", "status"]);
        assert_eq!(cli.addr, ["a:1", "b:2", "c:3"]);
        let cli = Cli::parse_from(["dynamoctl", "get", "k", "--addr", "x:9"]);
        assert_eq!(cli.addr, ["x:9"]);
    }

    #[test]
    fn tls_flags_do_not_clash_with_a_key_argument() {
        let cli = Cli::parse_from([
            "dynamoctl",
            "--ca",
            "ca.pem",
            "--cert",
            "c.pem",
            "--key",
            "k.pem",
            "get",
            "mykey",
        ]);
        assert_eq!(cli.key.as_deref(), Some(std::path::Path::new("k.pem")));
        assert!(matches!(cli.command, Command::Get(ref g) if format!("{g:?}").contains("mykey")));
        let err = Cli::try_parse_from(["dynamoctl", "--cert", "c.pem", "get", "k"]).unwrap_err();
        assert!(err.to_string().contains("--key"), "{err}");
    }

    #[test]
    fn a_zero_timeout_is_refused() {
        let err = Cli::try_parse_from(["dynamoctl", "--timeout", "0s", "get", "k"]).unwrap_err();
        assert!(
            err.to_string().contains("a timeout must be more than 0"),
            "{err}"
        );
        let cli = Cli::parse_from(["dynamoctl", "--timeout", "250ms", "get", "k"]);
        assert_eq!(cli.timeout, Duration::from_millis(250));
    }

    #[test]
    fn errors_show_code_and_message() {
        let err = anyhow::Error::from(dynamo_client::Error::from(tonic::Status::unavailable(
            "1 of 2 replicas answered",
        )));
        assert_eq!(
            describe_error(&err),
            "UNAVAILABLE: 1 of 2 replicas answered"
        );
        let err = anyhow::anyhow!("plain");
        assert_eq!(describe_error(&err), "plain");
    }

    #[test]
    fn binary_values_are_marked() {
        assert_eq!(show_bytes(b"hello"), "hello");
        assert_eq!(show_bytes(&[0xff, 0x00]), "base64:/wA=");
    }
}
