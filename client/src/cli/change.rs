//! `dynamoctl change`: change the members of a running cluster.
//!
//! - `plan`: the map the planner makes for the new member list and which partition
//!   replicas move, from where to where (nothing changes);
//! - `apply`: plans, commits the map as pending, watches the moves with a progress bar
//!   (partitions and bytes moved, rate, time left) and finalizes it once every move is
//!   done and every node holds it (`--no-wait`: commit only);
//! - `status`: the live maps and the pending change's progress;
//! - `finalize` / `abort`: finish or drop the pending change.
//!
//! The new member list is the newest map's, with `--add id=host:port` and `--remove id`,
//! or exactly `--members`; a member's address is its peer API's (`--peer-listen`). The
//! changes go to the peer port of the node `--addr` names, which its client port tells.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use dynamo_client::proto::{GossipMap, GossipMember, MapState, PlanResponse, ProgressResponse};
use dynamo_client::Client;
use indicatif::{ProgressBar, ProgressStyle};

use super::{client_config, Cli};

/// Arguments of `change`.
#[derive(Debug, Args)]
pub struct ChangeArgs {
    #[command(subcommand)]
    pub command: ChangeCommand,
}

/// The subcommands of `change`.
#[derive(Debug, Subcommand)]
pub enum ChangeCommand {
    /// Preview the map for the new members and the moves it needs.
    Plan(MembersArgs),
    /// Plan, commit, move the data and finalize (watching the progress).
    Apply(ApplyArgs),
    /// Show the live maps and the pending change's progress.
    Status,
    /// Put the pending map in force (refused while moves are left).
    Finalize,
    /// Drop the pending map; the map in force stays (nothing is lost).
    Abort,
}

/// The new member list.
#[derive(Debug, Args, Clone)]
pub struct MembersArgs {
    /// Add a member, `id=host:port` of its peer API (repeat or separate with commas).
    #[arg(long, value_delimiter = ',')]
    pub add: Vec<String>,
    /// Remove a member by id (repeat or separate with commas).
    #[arg(long, value_delimiter = ',')]
    pub remove: Vec<String>,
    /// Exactly these members, `id=host:port,...` of their peer APIs (instead of
    /// --add/--remove).
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["add", "remove"])]
    pub members: Vec<String>,
}

/// Arguments of `change apply`.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub members: MembersArgs,
    /// Commit only; do not wait for the moves or finalize.
    #[arg(long)]
    pub no_wait: bool,
}

pub async fn run(cli: &Cli, args: &ChangeArgs) -> anyhow::Result<ExitCode> {
    // Commit, finalize and abort are served on the nodes' peer port.
    let client = client_config(cli)?.connect().await?.peer_api().await?;
    match &args.command {
        ChangeCommand::Plan(m) => {
            let plan = plan(&client, m).await?;
            print_plan(&plan);
        }
        ChangeCommand::Apply(a) => apply(&client, a).await?,
        ChangeCommand::Status => status(&client).await?,
        ChangeCommand::Finalize => {
            let epoch = pending_epoch(&client).await?;
            client.finalize(epoch).await?;
            println!("epoch {epoch} is in force");
        }
        ChangeCommand::Abort => {
            let epoch = pending_epoch(&client).await?;
            client.abort(epoch).await?;
            println!("epoch {epoch} aborted; the map in force stays");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_member(s: &str) -> anyhow::Result<GossipMember> {
    let (id, addr) = s
        .split_once('=')
        .filter(|(id, addr)| !id.is_empty() && addr.contains(':'))
        .ok_or_else(|| anyhow::anyhow!("member {s:?} is not id=host:port"))?;
    Ok(GossipMember {
        id: id.to_owned(),
        addr: addr.to_owned(),
        zone: String::new(),
    })
}

/// The newest live map of the node that answers.
fn newest(state: &MapState) -> Option<&GossipMap> {
    state.pending.as_ref().or(state.current.as_ref())
}

async fn new_members(client: &Client, m: &MembersArgs) -> anyhow::Result<Vec<GossipMember>> {
    if !m.members.is_empty() {
        return m.members.iter().map(|s| parse_member(s)).collect();
    }
    let state = client.maps().await?.state.unwrap_or_default();
    let mut members = newest(&state)
        .map(|m| m.members.clone())
        .unwrap_or_default();
    for id in &m.remove {
        let before = members.len();
        members.retain(|x| &x.id != id);
        anyhow::ensure!(members.len() < before, "{id} is not a member");
    }
    for s in &m.add {
        let added = parse_member(s)?;
        anyhow::ensure!(
            !members.iter().any(|x| x.id == added.id),
            "{} is already a member",
            added.id
        );
        members.push(added);
    }
    Ok(members)
}

async fn plan(client: &Client, m: &MembersArgs) -> anyhow::Result<PlanResponse> {
    let members = new_members(client, m).await?;
    Ok(client.plan(members).await?)
}

fn print_plan(plan: &PlanResponse) {
    let Some(map) = &plan.map else { return };
    let ids: Vec<&str> = map.members.iter().map(|m| m.id.as_str()).collect();
    println!(
        "epoch {}: {} members ({}), Q={}, N={}",
        map.epoch,
        ids.len(),
        ids.join(", "),
        map.partitions,
        map.replication
    );
    println!(
        "{} partition replicas move (fewest possible: {}), about {} keys and {}",
        plan.moves.len(),
        plan.minimum_moves,
        plan.estimated_keys,
        bytes(plan.estimated_bytes)
    );
    for m in &plan.moves {
        let from = if m.from.is_empty() { "-" } else { &m.from };
        println!("  partition {:>4}: {from} -> {}", m.partition, m.to);
    }
}

async fn apply(client: &Client, a: &ApplyArgs) -> anyhow::Result<()> {
    let plan = plan(client, &a.members).await?;
    let map = plan
        .map
        .clone()
        .ok_or_else(|| anyhow::anyhow!("the node sent no map"))?;
    print_plan(&plan);
    client.commit(map.clone()).await?;
    println!("committed epoch {} as pending", map.epoch);
    if a.no_wait {
        return Ok(());
    }
    let total = plan.moves.len() as u64;
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} partitions, {msg} (eta {eta})",
        )
        .expect("valid template"),
    );
    let started = Instant::now();
    loop {
        match client.progress().await {
            Ok(p) => {
                bar.set_position(u64::from(p.done));
                let secs = started.elapsed().as_secs_f64().max(0.001);
                bar.set_message(format!(
                    "{} moved, {}/s",
                    bytes(p.bytes_moved),
                    bytes((p.bytes_moved as f64 / secs) as u64)
                ));
                if p.epoch == map.epoch && p.pending == 0 {
                    match client.finalize(map.epoch).await {
                        Ok(_) => break,
                        Err(e) if e.category() == "FAILED_PRECONDITION" => {
                            bar.set_message(e.message().to_owned())
                        }
                        Err(e) => return Err(e.into()),
                    }
                } else if p.epoch != map.epoch {
                    anyhow::bail!(
                        "epoch {} is no longer pending (aborted, or finalized by someone else)",
                        map.epoch
                    );
                }
            }
            Err(e) => bar.set_message(format!("{}: {}", e.category(), e.message())),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bar.finish();
    println!(
        "epoch {} is in force after {:.1} s",
        map.epoch,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn pending_epoch(client: &Client) -> anyhow::Result<u64> {
    let state = client.maps().await?.state.unwrap_or_default();
    state
        .pending
        .map(|m| m.epoch)
        .ok_or_else(|| anyhow::anyhow!("no change is pending"))
}

async fn status(client: &Client) -> anyhow::Result<()> {
    let state = client.maps().await?.state.unwrap_or_default();
    let show = |m: &GossipMap| {
        let ids: Vec<&str> = m.members.iter().map(|m| m.id.as_str()).collect();
        format!("epoch {} ({})", m.epoch, ids.join(", "))
    };
    println!("map state version {}", state.version);
    match &state.current {
        Some(m) => println!("in force: {}", show(m)),
        None => println!("in force: none (the first map is not finalized)"),
    }
    let Some(pending) = &state.pending else {
        println!("pending: none");
        return Ok(());
    };
    println!("pending:  {}", show(pending));
    let p: ProgressResponse = client.progress().await?;
    println!(
        "moves: {} done, {} left; {} moved; holding the pending map: {}",
        p.done,
        p.pending,
        bytes(p.bytes_moved),
        p.synced.join(", ")
    );
    if !p.unreachable.is_empty() {
        println!("not answering: {}", p.unreachable.join(", "));
    }
    for m in p.moves.iter().filter(|m| m.state != "done") {
        let err = if m.error.is_empty() {
            String::new()
        } else {
            format!(" ({})", m.error)
        };
        println!(
            "  partition {:>4} -> {}: {}{err}",
            m.partition, m.to, m.state
        );
    }
    Ok(())
}

fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_id_equals_address() {
        let m = parse_member("node-4=127.0.0.1:7104").unwrap();
        assert_eq!(
            (m.id.as_str(), m.addr.as_str()),
            ("node-4", "127.0.0.1:7104")
        );
        for bad in ["node-4", "=h:1", "n=nohost"] {
            assert!(parse_member(bad).is_err(), "{bad}");
        }
    }
}
