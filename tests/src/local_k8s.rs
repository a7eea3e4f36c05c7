//! A stand-in for the Kubernetes side of one cluster, so that the operator's
//! orchestration core drives real node processes through the same traits it drives
//! Kubernetes with.
//!
//! [`LocalStatefulSet`] is a StatefulSet whose pods are `dynamo-node` processes on
//! loopback (pod `<cluster>-<ordinal>` listens on `127.0.0.1:<base + ordinal>` and joins
//! through the others, as pods join through the headless Service), whose volume claims
//! are data directories, and whose status is held in memory like the API server holds
//! it across operator restarts. [`LocalStatefulSet::kubelet`] plays the StatefulSet
//! controller and the kubelet: it starts the pods of missing ordinals below `replicas`
//! (a pod killed with `kill -9` comes back with its volume) and stops those above.
//!
//! Deleting a volume checks what the operator must never get wrong: the pod is gone and
//! its node is in no live partition map (it was drained and the change finalized);
//! anything else is recorded in [`LocalStatefulSet::violations`] and refused.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use dynamo_operator::admin::nodes::NodeAddresses;
use dynamo_operator::admin::AdminError;
use dynamo_operator::crd::ScalingOperation;
use dynamo_operator::desired::Names;
use dynamo_operator::orchestrate::{EventType, WorkloadError, Workloads};
use dynamo_operator::scaling::{StsView, WorkloadView};
use dynamo_proto::v1::admin_client::AdminClient;
use dynamo_proto::v1::MapsRequest;

use crate::{http_status, node_binary, wait_exit};

/// The cluster id the pods are given.
pub const CLUSTER_ID: &str = "local/stand-in";

/// One pod: a node process.
struct Pod {
    child: Child,
}

#[derive(Default)]
struct State {
    replicas: u32,
    resource_version: u64,
    pods: BTreeMap<u32, Pod>,
    operation: Option<ScalingOperation>,
    events: Vec<String>,
    deleted: Vec<u32>,
    violations: Vec<String>,
    /// Mutating calls so far, for [`LocalStatefulSet::crash_every`].
    calls: u64,
    crash_every: Option<u64>,
}

/// A StatefulSet of node processes; cloning shares it.
#[derive(Clone)]
pub struct LocalStatefulSet {
    names: Names,
    dir: PathBuf,
    http_base: u16,
    /// Extra arguments of every node.
    args: Arc<Vec<String>>,
    state: Arc<Mutex<State>>,
}

impl LocalStatefulSet {
    /// An empty StatefulSet (zero replicas) of cluster `names`, whose addressing must be
    /// `HostPorts` on loopback; HTTP ports are `http_base + ordinal`; data directories
    /// and logs go under `dir`.
    pub fn new(names: Names, http_base: u16, dir: &Path, args: Vec<String>) -> Self {
        Self {
            names,
            dir: dir.to_path_buf(),
            http_base,
            args: Arc::new(args),
            state: Arc::default(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// From now on every `k`-th mutating call (record, scale, delete a volume) fails as if
    /// the operator crashed: odd ones before the effect, even ones after it.
    pub fn crash_every(&self, k: u64) {
        self.state().crash_every = Some(k);
    }

    /// Data directory (the volume claim) of an ordinal.
    pub fn data_dir(&self, ordinal: u32) -> PathBuf {
        self.dir.join(format!("data-{}", self.names.pod(ordinal)))
    }

    /// Log file of an ordinal's node.
    pub fn log_path(&self, ordinal: u32) -> PathBuf {
        self.dir.join(format!("{}.log", self.names.pod(ordinal)))
    }

    /// The gRPC address of an ordinal's node.
    pub fn addr(&self, ordinal: u32) -> String {
        self.names.peer_addr(ordinal)
    }

    /// Ordinals whose pod exists.
    pub fn pods(&self) -> BTreeSet<u32> {
        self.state().pods.keys().copied().collect()
    }

    /// The StatefulSet's replicas.
    pub fn replicas(&self) -> u32 {
        self.state().replicas
    }

    /// Events published so far.
    pub fn events(&self) -> Vec<String> {
        self.state().events.clone()
    }

    /// Ordinals whose volume was deleted, in order.
    pub fn deleted(&self) -> Vec<u32> {
        self.state().deleted.clone()
    }

    /// Volume deletions that would have lost data.
    pub fn violations(&self) -> Vec<String> {
        self.state().violations.clone()
    }

    /// The StatefulSet controller and kubelet: starts the pod of every ordinal below
    /// `replicas` that has none (or whose process died), and stops (SIGTERM, then
    /// SIGKILL after 15 s) every pod at or above it.
    pub fn kubelet(&self) {
        let mut st = self.state();
        let replicas = st.replicas;
        let dead: Vec<u32> = st
            .pods
            .iter_mut()
            .filter_map(|(&o, p)| (!matches!(p.child.try_wait(), Ok(None))).then_some(o))
            .collect();
        for o in dead {
            st.pods.remove(&o);
        }
        let gone: Vec<u32> = st.pods.keys().copied().filter(|&o| o >= replicas).collect();
        for o in gone {
            let mut pod = st.pods.remove(&o).expect("listed");
            // SAFETY: kill(2) on our own child, not reaped yet.
            unsafe { libc::kill(pod.child.id() as libc::pid_t, libc::SIGTERM) };
            wait_exit(&mut pod.child, Duration::from_secs(15));
        }
        for o in 0..replicas {
            if let std::collections::btree_map::Entry::Vacant(e) = st.pods.entry(o) {
                e.insert(Pod {
                    child: self.spawn(o, replicas),
                });
            }
        }
    }

    /// `kill -9` of an ordinal's node; the next [`Self::kubelet`] restarts it.
    pub fn kill9(&self, ordinal: u32) {
        if let Some(mut pod) = self.state().pods.remove(&ordinal) {
            let _ = pod.child.kill();
            let _ = pod.child.wait();
        }
    }

    fn spawn(&self, ordinal: u32, replicas: u32) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(ordinal))
            .expect("open node log");
        std::fs::create_dir_all(self.data_dir(ordinal)).expect("create the volume");
        let secret = self.dir.join("cluster-secret");
        if !secret.exists() {
            std::fs::write(&secret, "stand-in-cluster-secret-0123456789").expect("secret");
        }
        // The headless Service resolves to every pod of the StatefulSet.
        let seeds = (0..replicas.max(1))
            .map(|o| self.addr(o))
            .collect::<Vec<_>>()
            .join(",");
        Command::new(node_binary())
            .args(["--node-id", &self.names.pod(ordinal)])
            .args(["--listen", &self.addr(ordinal)])
            .args([
                "--http-listen",
                &format!("127.0.0.1:{}", u32::from(self.http_base) + ordinal),
            ])
            .args(["--data-dir", &self.data_dir(ordinal).to_string_lossy()])
            .args(["--cluster-id", CLUSTER_ID])
            .args(["--cluster-secret-file", &secret.to_string_lossy()])
            .args(["--seeds", &seeds])
            .args(self.args.iter())
            .env("RUST_LOG", "info,dynamo_node=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn dynamo-node")
    }

    fn ready(&self, ordinal: u32) -> bool {
        let http = format!("127.0.0.1:{}", u32::from(self.http_base) + ordinal);
        http_status(http.parse().expect("address"), "/readyz") == Some(200)
    }

    /// Counts a mutating call; fails it when an injected crash is due, `before` the
    /// effect or after it.
    fn crash(&self, before: bool) -> Result<(), WorkloadError> {
        let mut st = self.state();
        let Some(k) = st.crash_every else {
            return Ok(());
        };
        if before {
            st.calls += 1;
        }
        let due = st.calls.is_multiple_of(k);
        let odd = (st.calls / k) % 2 == 1;
        match due && odd == before {
            true => Err(WorkloadError::Api("injected operator crash".into())),
            false => Ok(()),
        }
    }

    /// Whether `id` is a member of a live map on any node that answers.
    async fn in_a_live_map(&self, id: &str) -> Result<bool, String> {
        let pods: Vec<u32> = self.pods().into_iter().collect();
        for o in pods {
            let Ok(mut admin) = AdminClient::connect(format!("http://{}", self.addr(o))).await
            else {
                continue;
            };
            let Ok(state) = admin.maps(MapsRequest {}).await else {
                continue;
            };
            let Some(state) = state.into_inner().state else {
                continue;
            };
            let state = dynamo_proto::maps::state_from_proto(state).map_err(|e| e.to_string())?;
            let live = state.current.iter().chain(state.pending.iter());
            return Ok(live
                .into_iter()
                .any(|m| m.members.iter().any(|m| m.id == id)));
        }
        Err("no node answered".into())
    }

    /// Kills every pod.
    pub fn shut_down(&self) {
        let mut st = self.state();
        for (_, mut pod) in std::mem::take(&mut st.pods) {
            let _ = pod.child.kill();
            let _ = pod.child.wait();
        }
    }
}

impl Drop for State {
    fn drop(&mut self) {
        for pod in self.pods.values_mut() {
            let _ = pod.child.kill();
            let _ = pod.child.wait();
        }
    }
}

impl Workloads for LocalStatefulSet {
    async fn observe(&self) -> Result<WorkloadView, WorkloadError> {
        let (replicas, rv, pods, op) = {
            let st = self.state();
            (
                st.replicas,
                st.resource_version,
                st.pods.keys().copied().collect::<Vec<_>>(),
                st.operation.clone(),
            )
        };
        let pvcs = (0..64)
            .filter(|&o| self.data_dir(o).exists())
            .collect::<BTreeSet<u32>>();
        Ok(WorkloadView {
            statefulset: Some(StsView {
                replicas,
                resource_version: Some(rv.to_string()),
            }),
            pods: pods.into_iter().map(|o| (o, self.ready(o))).collect(),
            pvcs,
            zones: BTreeMap::new(),
            operation: op,
        })
    }

    async fn record(&self, op: Option<&ScalingOperation>) -> Result<(), WorkloadError> {
        self.crash(true)?;
        self.state().operation = op.cloned();
        self.crash(false)
    }

    async fn scale(
        &self,
        replicas: u32,
        expected_resource_version: Option<&str>,
    ) -> Result<(), WorkloadError> {
        self.crash(true)?;
        {
            let mut st = self.state();
            if let Some(rv) = expected_resource_version {
                if rv != st.resource_version.to_string() {
                    return Err(WorkloadError::Conflict(format!(
                        "StatefulSet at resourceVersion {}, expected {rv}",
                        st.resource_version
                    )));
                }
            }
            st.replicas = replicas;
            st.resource_version += 1;
        }
        self.crash(false)
    }

    async fn delete_volume(&self, ordinal: u32) -> Result<(), WorkloadError> {
        self.crash(true)?;
        let id = self.names.pod(ordinal);
        if self.state().pods.contains_key(&ordinal) {
            let why = format!("volume of {id} deleted while its pod exists");
            self.state().violations.push(why.clone());
            return Err(WorkloadError::Api(why));
        }
        match self.in_a_live_map(&id).await {
            Ok(false) => {}
            Ok(true) => {
                let why = format!("volume of {id} deleted while it is in a live map");
                self.state().violations.push(why.clone());
                return Err(WorkloadError::Api(why));
            }
            Err(e) => return Err(WorkloadError::Api(format!("cannot check {id}: {e}"))),
        }
        let dir = self.data_dir(ordinal);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .map_err(|e| WorkloadError::Api(format!("deleting {}: {e}", dir.display())))?;
            self.state().deleted.push(ordinal);
        }
        self.crash(false)
    }

    async fn event(
        &self,
        kind: EventType,
        reason: &str,
        message: &str,
    ) -> Result<(), WorkloadError> {
        self.state()
            .events
            .push(format!("{kind:?} {reason}: {message}"));
        Ok(())
    }
}

/// The admin side reaches the nodes of the pods that exist, lowest ordinal first, as
/// the operator's `PodAddresses` does on Kubernetes.
impl NodeAddresses for LocalStatefulSet {
    async fn addresses(&self) -> Result<Vec<String>, AdminError> {
        Ok(self.pods().into_iter().map(|o| self.addr(o)).collect())
    }
}
