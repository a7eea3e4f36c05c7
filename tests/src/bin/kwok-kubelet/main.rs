//! `kwok-kubelet`: a stand-in kubelet for the pods kwok runs on its fake Node, for the
//! Kubernetes suite (`scripts/test-k8s.sh`). kwok moves pods to Running but runs nothing;
//! this runs a real process for each pod whose image is `dynamo-node` or `dynamo-operator`,
//! with the arguments, environment, ConfigMap files and claims its spec gives it, every
//! address mapped to a loopback port (see `launch.rs`), and a ServiceAccount token bound
//! to the pod for the operator. It reports each process's readiness probe as the pod's
//! Ready condition, restarts a process that exits while its pod runs (after its restart
//! count in seconds, at most 10), and stops it
//! (SIGTERM, then SIGKILL after the pod's grace period, at most 10 s) when its pod is
//! deleted. On SIGTERM or SIGINT it stops every process it started, then exits; if it is
//! killed, the kernel kills them (parent-death signal).
//!
//! Polls the pods of its Node every 300 ms: simple, and fast enough for tests.

mod launch;
mod token;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Parser;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

use launch::{Inputs, Kind, Ports};

#[derive(Parser, Debug)]
struct Args {
    /// The fake Node whose pods to run.
    #[arg(long, default_value = "kwok-node-0")]
    node: String,
    /// Directory of the `dynamo-node` and `dynamo-operator` binaries.
    #[arg(long)]
    bin_dir: PathBuf,
    /// Where pod files, volumes and process logs go.
    #[arg(long)]
    work_dir: PathBuf,
    /// API server URL written into the operator's kubeconfig.
    #[arg(long)]
    api_server: String,
    /// CA certificate of the API server.
    #[arg(long)]
    ca_file: PathBuf,
    #[arg(long, default_value_t = 7300)]
    node_grpc_base: u16,
    /// Node ordinal i's peer port (replication, gossip, the operator's admin calls) is
    /// this + i; the operator is given it as its host-ports addressing.
    #[arg(long, default_value_t = 7340)]
    node_peer_base: u16,
    #[arg(long, default_value_t = 7380)]
    node_http_base: u16,
    #[arg(long, default_value_t = 7460)]
    operator_http_base: u16,
}

struct Proc {
    ns: String,
    name: String,
    kind: Kind,
    slot: u16,
    slots: Vec<String>,
    child: Child,
    ready_url: Option<String>,
    /// Readiness last reported to the API (None: not yet).
    reported: Option<bool>,
}

struct Stopping {
    label: String,
    slots: Vec<String>,
    child: Child,
    kill_at: Instant,
}

fn pod_running(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

fn pod_kind(p: &Pod) -> Option<Kind> {
    let c = p.spec.as_ref()?.containers.first()?;
    Kind::of(c.image.as_deref()?)
}

fn terminate(mut child: Child, label: String, slots: Vec<String>, grace: u64) -> Stopping {
    if let Some(pid) = child.id() {
        // SAFETY: plain kill(2) on the pid of a child this process spawned.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    } else {
        let _ = child.start_kill();
    }
    Stopping {
        label,
        slots,
        child,
        kill_at: Instant::now() + Duration::from_secs(grace.min(10)),
    }
}

/// GET `url` (plain HTTP on loopback), true on a 2xx answer within a second.
async fn probe(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let (addr, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let get = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = vec![0u8; 64];
        let n = s.read(&mut buf).await.ok()?;
        let head = String::from_utf8_lossy(&buf[..n]).to_string();
        Some(head.split_whitespace().nth(1)?.starts_with('2'))
    };
    tokio::time::timeout(Duration::from_secs(1), get)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

async fn report_ready(api: &Api<Pod>, name: &str, container: &str, ready: bool) -> Result<()> {
    let status = if ready { "True" } else { "False" };
    let now = chrono_now();
    let patch = serde_json::json!({"status": {
        "conditions": [
            {"type": "Ready", "status": status, "lastTransitionTime": now},
            {"type": "ContainersReady", "status": status, "lastTransitionTime": now},
        ],
        "containerStatuses": [{"name": container, "ready": ready}],
    }});
    api.patch_status(name, &PatchParams::default(), &Patch::Strategic(&patch))
        .await?;
    Ok(())
}

/// RFC 3339 time of now, to the second (no date crate needed).
fn chrono_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let client = kube::Client::try_default().await?;
    let pods_all: Api<Pod> = Api::all(client.clone());
    let ports = Ports {
        node_grpc: args.node_grpc_base,
        node_peer: args.node_peer_base,
        node_http: args.node_http_base,
        operator_http: args.operator_http_base,
    };
    std::fs::create_dir_all(args.work_dir.join("logs"))?;
    let mut procs: BTreeMap<String, Proc> = BTreeMap::new(); // by pod UID
    let mut stopping: Vec<Stopping> = vec![];
    let mut failed_launch: BTreeMap<String, String> = BTreeMap::new();
    let mut restarts: BTreeMap<String, (u32, Instant)> = BTreeMap::new(); // by pod UID
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let lp = ListParams::default().fields(&format!("spec.nodeName={}", args.node));
    eprintln!("kwok-kubelet: running the pods of node {}", args.node);

    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(300)) => {}
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
        }
        let pods = match pods_all.list(&lp).await {
            Ok(l) => l.items,
            Err(e) => {
                eprintln!("kwok-kubelet: listing pods: {e}");
                continue;
            }
        };
        let wanted: BTreeMap<String, &Pod> = pods
            .iter()
            .filter(|p| pod_running(p) && pod_kind(p).is_some())
            .filter_map(|p| Some((p.uid()?, p)))
            .collect();

        // Stop the processes of pods that are gone or terminating.
        let gone: Vec<String> = procs
            .keys()
            .filter(|uid| !wanted.contains_key(*uid))
            .cloned()
            .collect();
        for uid in gone {
            let p = procs.remove(&uid).expect("listed");
            let grace = pods
                .iter()
                .find(|q| q.uid().as_deref() == Some(uid.as_str()))
                .and_then(|q| q.metadata.deletion_grace_period_seconds)
                .unwrap_or(10)
                .max(0) as u64;
            eprintln!(
                "kwok-kubelet: stopping {}/{} (its pod is gone)",
                p.ns, p.name
            );
            stopping.push(terminate(
                p.child,
                format!("{}/{}", p.ns, p.name),
                p.slots,
                grace,
            ));
        }
        stopping.retain_mut(|s| match s.child.try_wait() {
            Ok(Some(status)) => {
                eprintln!("kwok-kubelet: {} exited ({status})", s.label);
                false
            }
            _ => {
                if Instant::now() >= s.kill_at {
                    let _ = s.child.start_kill();
                }
                true
            }
        });

        // Processes that exited by themselves: restarted below, like a container.
        let exited: Vec<String> = procs
            .iter_mut()
            .filter_map(|(uid, p)| {
                let status = p.child.try_wait().ok().flatten()?;
                eprintln!(
                    "kwok-kubelet: {}/{} exited ({status}); restarting",
                    p.ns, p.name
                );
                Some(uid.clone())
            })
            .collect();
        for uid in exited {
            procs.remove(&uid);
            let r = restarts.entry(uid).or_insert((0, Instant::now()));
            *r = (r.0 + 1, Instant::now());
        }
        restarts.retain(|uid, _| wanted.contains_key(uid));

        // Start the processes of running pods that have none.
        let busy: BTreeSet<String> = procs
            .values()
            .flat_map(|p| p.slots.clone())
            .chain(stopping.iter().flat_map(|s| s.slots.clone()))
            .collect();
        for (uid, pod) in &wanted {
            if procs.contains_key(uid) {
                continue;
            }
            // Back off like a kubelet: a process that keeps exiting waits its restart
            // count in seconds (at most 10) before the next start.
            if let Some((n, at)) = restarts.get(uid) {
                if at.elapsed() < Duration::from_secs(u64::from(*n).min(10)) {
                    continue;
                }
            }
            let kind = pod_kind(pod).expect("filtered");
            let slot = (0..64)
                .find(|s| !procs.values().any(|p| p.kind == kind && p.slot == *s))
                .unwrap_or(0);
            let inputs = Inputs {
                client: &client,
                pod,
                pods: &pods,
                ports: &ports,
                slot,
                bin_dir: &args.bin_dir,
                work_dir: &args.work_dir,
                api_server: &args.api_server,
                ca_file: &args.ca_file,
            };
            let l = match launch::launch(inputs).await {
                Ok(l) => l,
                Err(e) => {
                    let msg = format!("{e:#}");
                    if failed_launch.get(uid) != Some(&msg) {
                        eprintln!("kwok-kubelet: cannot start {}: {msg}", pod.name_any());
                        failed_launch.insert(uid.clone(), msg);
                    }
                    continue;
                }
            };
            if l.slots.iter().any(|s| busy.contains(s)) {
                continue; // the previous pod of this name is still stopping
            }
            let ns = pod.namespace().unwrap_or_default();
            let log = args
                .work_dir
                .join("logs")
                .join(format!("{ns}_{}.log", pod.name_any()));
            let out = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)?;
            let mut cmd = Command::new(&l.program);
            // SAFETY: prctl(2) only, between fork and exec: the process is killed if this
            // one dies (even by SIGKILL), so no pod process outlives the suite.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            let child = cmd
                .args(&l.args)
                .env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .envs(l.env.iter().map(|(k, v)| (k, v)))
                .stdin(Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(out)
                .kill_on_drop(true)
                .spawn();
            match child {
                Ok(child) => {
                    eprintln!(
                        "kwok-kubelet: started {ns}/{} (pid {}, restarts {}): {} {}",
                        pod.name_any(),
                        child.id().unwrap_or(0),
                        restarts.get(uid).map_or(0, |r| r.0),
                        l.program.display(),
                        l.args.join(" ")
                    );
                    failed_launch.remove(uid);
                    procs.insert(
                        uid.clone(),
                        Proc {
                            ns,
                            name: pod.name_any(),
                            kind,
                            slot,
                            slots: l.slots,
                            child,
                            ready_url: l.ready_url,
                            reported: None,
                        },
                    );
                }
                Err(e) => eprintln!("kwok-kubelet: spawning {}: {e}", l.program.display()),
            }
        }

        // Readiness probes → the pods' Ready condition.
        for (uid, p) in procs.iter_mut() {
            let Some(url) = &p.ready_url else { continue };
            let ready = probe(url).await;
            let pod = wanted.get(uid);
            let api_ready = pod
                .and_then(|q| q.status.as_ref())
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
                .map(|c| c.status == "True");
            if p.reported == Some(ready) && api_ready == Some(ready) {
                continue;
            }
            let container = pod
                .and_then(|q| q.spec.as_ref())
                .and_then(|s| s.containers.first())
                .map(|c| c.name.clone())
                .unwrap_or_default();
            let api: Api<Pod> = Api::namespaced(client.clone(), &p.ns);
            match report_ready(&api, &p.name, &container, ready).await {
                Ok(()) => p.reported = Some(ready),
                Err(e) => eprintln!("kwok-kubelet: readiness of {}/{}: {e}", p.ns, p.name),
            }
        }
    }

    eprintln!("kwok-kubelet: stopping every process");
    for (_, p) in std::mem::take(&mut procs) {
        stopping.push(terminate(
            p.child,
            format!("{}/{}", p.ns, p.name),
            p.slots,
            10,
        ));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for mut s in stopping {
        let left = deadline.saturating_duration_since(Instant::now());
        if tokio::time::timeout(left, s.child.wait()).await.is_err() {
            let _ = s.child.kill().await;
        }
    }
    Ok(())
}
