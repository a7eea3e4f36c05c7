//! The real reconciler (`reconcile::reconcile`: finalizer, validation, server-side apply,
//! scaling step, status, Events) against the in-memory fake API server behind a real
//! `kube::Client`, with its simulated StatefulSet controller, and the in-memory model of
//! the nodes' admin side. One test also runs kube's `Controller` on the fake API's watches.
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use dynamo_operator::admin::fake_nodes::FakeNodes;
use dynamo_operator::admin::memory::MemoryAdmin;
use dynamo_operator::admin::nodes::PodAddressing;
use dynamo_operator::crd::{DynamoCluster, Phase};
use dynamo_operator::fake_api::FakeApi;
use dynamo_operator::metrics::Metrics;
use dynamo_operator::reconcile::{reconcile, AdminSource, Context, FINALIZER};
use futures::StreamExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Recorder, Reporter};
use serde_json::{json, Value};

const MAX_PASSES: usize = 300;

struct Env {
    api: FakeApi,
    admin: MemoryAdmin,
    ctx: Arc<Context>,
    /// Claims seen so far, to check each deletion against the admin side.
    claims: std::sync::Mutex<BTreeSet<String>>,
    /// Partition replicas the nodes move per round.
    moves: usize,
    /// The fake nodes the operator talks gRPC to, with `AdminSource::Nodes`.
    nodes: Option<FakeNodes>,
    /// A stand-in for cert-manager: issues a Secret for each `Certificate` one tick after
    /// it appears, with this CA.
    cert_manager: Option<CertManager>,
}

struct CertManager {
    ca: dynamo_proto::certs::Ca,
    seen: std::sync::Mutex<BTreeSet<String>>,
}

impl CertManager {
    fn new() -> Self {
        Self {
            ca: dynamo_proto::certs::Ca::generate("corp", Duration::from_secs(3600 * 24)).unwrap(),
            seen: Default::default(),
        }
    }

    /// Issues the Certificates seen at the previous tick that have no Secret yet.
    fn tick(&self, api: &FakeApi) {
        use base64::Engine as _;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let certificates = api.list("certificates", "default");
        let mut seen = self.seen.lock().unwrap();
        for c in &certificates {
            let name = c["metadata"]["name"].as_str().unwrap().to_string();
            let secret = c["spec"]["secretName"].as_str().unwrap().to_string();
            if !seen.contains(&name) || api.get("secrets", "default", &secret).is_some() {
                continue;
            }
            let uri = c["spec"]["uris"][0].as_str().unwrap();
            let identity = dynamo_core::identity::Identity::parse(uri).unwrap();
            let hosts = c["spec"]["dnsNames"]
                .as_array()
                .into_iter()
                .flatten()
                .chain(c["spec"]["ipAddresses"].as_array().into_iter().flatten())
                .map(|h| h.as_str().unwrap().to_string())
                .collect();
            let issued = self
                .ca
                .issue(&dynamo_proto::certs::Leaf::new(
                    identity,
                    hosts,
                    Duration::from_secs(3600),
                ))
                .unwrap();
            let obj = json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                "data": {"tls.crt": b64(&issued.cert_pem), "tls.key": b64(&issued.key_pem),
                         "ca.crt": b64(self.ca.cert_pem())}});
            api.with_store(|s| s.create(&("secrets".into(), "default".into(), secret), obj))
                .unwrap();
        }
        *seen = certificates
            .iter()
            .map(|c| c["metadata"]["name"].as_str().unwrap().to_string())
            .collect();
    }
}

fn recorder(api: &FakeApi) -> Recorder {
    let reporter = Reporter {
        controller: "dynamo-operator".into(),
        instance: Some("test".into()),
    };
    Recorder::new(api.client(), reporter)
}

fn env_with(admin: AdminSource, memory: MemoryAdmin) -> Env {
    let api = FakeApi::new();
    let ctx = Arc::new(Context {
        client: api.client(),
        recorder: recorder(&api),
        metrics: Arc::new(Metrics::default()),
        admin,
    });
    Env {
        api,
        admin: memory,
        ctx,
        claims: Default::default(),
        moves: 24,
        nodes: None,
        cert_manager: None,
    }
}

fn env() -> Env {
    let memory = MemoryAdmin::new();
    env_with(AdminSource::Memory(memory.clone()), memory)
}

/// The operator as it runs: over the nodes' gRPC Admin API, here fake nodes on loopback
/// (one per ordinal, answering while their pod is ready) over the in-memory model.
async fn env_over_grpc() -> Env {
    let memory = MemoryAdmin::new();
    let nodes = FakeNodes::start(memory.clone(), (0..6).map(|o| format!("kv-{o}"))).await;
    let addrs = nodes.addresses();
    let admin = AdminSource::Nodes {
        channels: Default::default(),
        certs: Default::default(),
        addressing: PodAddressing::new(move |_, o| addrs[o as usize].clone()),
        peers: Default::default(),
    };
    let mut e = env_with(admin, memory);
    e.nodes = Some(nodes);
    e
}

impl Env {
    fn create(&self, mut spec: Value) {
        if self.nodes.is_some() {
            // The fake nodes serve plaintext gRPC.
            spec["tls"] = json!({"enabled": false});
        }
        let obj = json!({"apiVersion": "dynamokv.io/v1alpha1", "kind": "DynamoCluster", "metadata": {"name": "kv"}, "spec": spec});
        self.api
            .with_store(|s| {
                s.create(
                    &("dynamoclusters".into(), "default".into(), "kv".into()),
                    obj,
                )
            })
            .unwrap();
    }

    fn clusters(&self) -> Api<DynamoCluster> {
        Api::namespaced(self.api.client(), "default")
    }

    fn dc(&self) -> DynamoCluster {
        serde_json::from_value(
            self.api
                .get("dynamoclusters", "default", "kv")
                .expect("cluster exists"),
        )
        .unwrap()
    }

    async fn pass(&self) -> bool {
        let result = reconcile(Arc::new(self.dc()), self.ctx.clone()).await;
        if let Err(e) = &result {
            eprintln!("reconcile error: {e}");
        }
        self.tick();
        result.is_ok()
    }

    fn tick(&self) {
        if let Some(cm) = &self.cert_manager {
            cm.tick(&self.api);
        }
        self.api.run_statefulset_controller();
        let ready = self
            .api
            .list("pods", "default")
            .into_iter()
            .filter(|p| p["status"]["conditions"][0]["status"] == "True");
        self.admin
            .set_up(ready.map(|p| p["metadata"]["name"].as_str().unwrap().to_string()));
        self.admin.tick(self.moves);
        self.check_safety();
    }

    /// No claim disappears unless its node left every live map and is drained; every
    /// partition keeps N copies.
    fn check_safety(&self) {
        let now: BTreeSet<String> = self
            .api
            .list("persistentvolumeclaims", "default")
            .iter()
            .map(|c| c["metadata"]["name"].as_str().unwrap().to_string())
            .collect();
        let mut seen = self.claims.lock().unwrap();
        for gone in seen.difference(&now) {
            let node = gone.strip_prefix("data-").unwrap();
            assert!(
                !self.admin.in_live_map(node),
                "claim {gone} deleted while {node} is in a live map"
            );
            assert!(
                self.admin.is_drained(node),
                "claim {gone} deleted before {node} drained"
            );
        }
        *seen = now;
        // No node pod ever exists without its certificate in the TLS Secret.
        if self.dc().spec.tls.enabled {
            let secret = self.api.get("secrets", "default", "kv-tls");
            for pod in self.names("pods") {
                let key = format!("{pod}.crt");
                assert!(
                    secret.as_ref().is_some_and(|s| s["data"][&key].is_string()),
                    "pod {pod} exists without {key} in the Secret kv-tls"
                );
            }
        }
        if self.admin.snapshot().current.is_some() {
            assert!(self.admin.min_copies() >= 3, "a partition lost copies");
        }
    }

    fn settled(&self) -> bool {
        let dc = self.dc();
        let Some(st) = dc.status else { return false };
        let sts = self.sts_replicas();
        st.operation.is_none()
            && (st.phase == Phase::Degraded
                || (st.phase == Phase::Available
                    && st.map_epoch > 0
                    && dc.spec.replicas as u64 == sts
                    && st.ready_replicas == sts as i32
                    && st.replicas == sts as i32))
    }

    async fn settle(&self) {
        for _ in 0..MAX_PASSES {
            let ok = self.pass().await;
            if ok && self.settled() {
                // One more pass must change nothing but status: the cluster is really steady.
                return;
            }
        }
        panic!("did not settle: {:?}", self.dc().status);
    }

    fn sts_replicas(&self) -> u64 {
        self.api
            .get("statefulsets", "default", "kv")
            .map_or(0, |s| s["spec"]["replicas"].as_u64().unwrap())
    }

    fn names(&self, plural: &str) -> Vec<String> {
        self.api
            .list(plural, "default")
            .iter()
            .map(|o| o["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    }

    fn map_nodes(&self) -> usize {
        self.admin.snapshot().current.map_or(0, |m| m.members.len())
    }

    fn events(&self) -> Vec<(String, String)> {
        self.api
            .list("events", "default")
            .iter()
            .map(|e| {
                (
                    e["type"].as_str().unwrap_or_default().to_string(),
                    e["reason"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    /// An independent copy of this environment (objects and admin state).
    fn fork(&self) -> Env {
        let admin = self.admin.fork();
        let api = self.api.fork();
        let ctx = Arc::new(Context {
            client: api.client(),
            recorder: recorder(&api),
            metrics: Arc::new(Metrics::default()),
            admin: AdminSource::Memory(admin.clone()),
        });
        Env {
            api,
            admin,
            ctx,
            claims: std::sync::Mutex::new(self.claims.lock().unwrap().clone()),
            moves: self.moves,
            nodes: None,
            cert_manager: None,
        }
    }

    async fn scale(&self, replicas: i32) {
        self.clusters()
            .patch_scale(
                "kv",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"replicas": replicas}})),
            )
            .await
            .unwrap();
    }
}

async fn running(replicas: i32) -> Env {
    let e = env();
    e.create(json!({"replicas": replicas}));
    e.settle().await;
    e
}

#[tokio::test]
async fn create_builds_every_owned_object_and_becomes_available() {
    let e = running(3).await;
    let dc = e.dc();
    assert!(dc
        .metadata
        .finalizers
        .as_ref()
        .unwrap()
        .contains(&FINALIZER.to_string()));
    let st = dc.status.unwrap();
    assert_eq!(
        (st.phase, st.replicas, st.ready_replicas, st.map_epoch),
        (Phase::Available, 3, 3, 1)
    );
    assert_eq!(st.observed_generation, Some(1));
    assert_eq!(
        st.selector.as_deref(),
        Some("app.kubernetes.io/instance=kv,app.kubernetes.io/name=dynamo")
    );
    assert_eq!(st.partitions_per_node.values().sum::<i32>(), 256);
    let available = st
        .conditions
        .iter()
        .find(|c| c.type_ == "Available")
        .unwrap();
    assert_eq!(available.status, "True");
    assert_eq!(e.names("services"), ["kv", "kv-peers"]);
    assert_eq!(e.names("configmaps"), ["kv-config"]);
    // The cluster secret, made once and read by every node from the environment; TLS
    // (on by default): the CA and every pod's certificate.
    assert_eq!(e.names("secrets"), ["kv-ca", "kv-secret", "kv-tls"]);
    let tls = e.api.get("secrets", "default", "kv-tls").unwrap();
    let mut keys: Vec<&String> = tls["data"].as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        ["ca.crt", "kv-0.crt", "kv-0.key", "kv-1.crt", "kv-1.key", "kv-2.crt", "kv-2.key"]
    );
    assert_eq!(e.names("poddisruptionbudgets"), ["kv"]);
    assert_eq!(e.names("pods"), ["kv-0", "kv-1", "kv-2"]);
    let sts = e.api.get("statefulsets", "default", "kv").unwrap();
    assert_eq!(
        sts["metadata"]["ownerReferences"][0]["kind"],
        "DynamoCluster"
    );
    assert_eq!(
        sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenScaled"],
        "Retain"
    );
    let reqs = e.api.requests();
    assert!(reqs.iter().any(|r| r
        .starts_with("PATCH /apis/apps/v1/namespaces/default/statefulsets/kv?")
        && r.contains("fieldManager=dynamo-operator")
        && r.contains("force=true")));
    assert!(e
        .events()
        .contains(&("Normal".into(), "MapCommitted".into())));
}

#[tokio::test]
async fn spec_update_rolls_the_template_without_touching_replicas() {
    let e = running(3).await;
    let secret_before = e.api.get("secrets", "default", "kv-secret").unwrap();
    e.clusters()
        .patch(
            "kv",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"image": "dynamo-node:0.2.0"}})),
        )
        .await
        .unwrap();
    e.settle().await;
    let sts = e.api.get("statefulsets", "default", "kv").unwrap();
    assert_eq!(
        sts["spec"]["template"]["spec"]["containers"][0]["image"],
        "dynamo-node:0.2.0"
    );
    assert_eq!(sts["spec"]["replicas"], 3);
    let secret_env = &sts["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "DYNAMO_CLUSTER_SECRET")
        .expect("the node gets the cluster secret")["valueFrom"]["secretKeyRef"];
    assert_eq!(secret_env["name"], "kv-secret");
    assert_eq!(
        e.api.get("secrets", "default", "kv-secret").unwrap()["data"],
        secret_before["data"],
        "later reconciles never rewrite the cluster secret"
    );
    assert_eq!(e.dc().status.unwrap().observed_generation, Some(2));
    assert_eq!(
        e.admin.snapshot().current.unwrap().epoch,
        1,
        "an image change is not a map change"
    );
}

#[tokio::test]
async fn scale_3_to_5_through_the_scale_subresource() {
    let e = running(3).await;
    let config_before = e.api.get("configmaps", "default", "kv-config").unwrap();
    e.scale(5).await;
    e.settle().await;
    assert_eq!((e.sts_replicas(), e.map_nodes()), (5, 5));
    let st = e.dc().status.unwrap();
    assert_eq!(
        (st.replicas, st.map_epoch, st.partitions_per_node.len()),
        (5, 2, 5)
    );
    let scale = e.clusters().get_scale("kv").await.unwrap();
    assert_eq!(scale.status.unwrap().replicas, 5);
    // The new pods got certificates (checked before each existed, in `tick`); the first
    // ones kept theirs.
    let tls = e.api.get("secrets", "default", "kv-tls").unwrap();
    assert!(tls["data"]["kv-4.key"].is_string());
    let cm = e.api.get("configmaps", "default", "kv-config").unwrap();
    assert_eq!(
        cm["data"], config_before["data"],
        "nodes start from seeds: a scale does not rewrite their file"
    );
}

#[tokio::test]
async fn scale_5_to_3_drains_then_shrinks_then_deletes_claims() {
    let e = running(5).await;
    e.admin.add_hints("kv-4", 20);
    e.scale(3).await;
    e.settle().await;
    assert_eq!((e.sts_replicas(), e.map_nodes()), (3, 3));
    assert_eq!(e.names("pods"), ["kv-0", "kv-1", "kv-2"]);
    assert_eq!(
        e.names("persistentvolumeclaims"),
        ["data-kv-0", "data-kv-1", "data-kv-2"]
    );
    let st = e.dc().status.unwrap();
    assert_eq!(
        st.partitions_per_node.keys().cloned().collect::<Vec<_>>(),
        ["kv-0", "kv-1", "kv-2"],
        "departed nodes leave status"
    );
    let deletes: Vec<String> = e
        .api
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("DELETE"))
        .collect();
    assert_eq!(deletes.len(), 2, "{deletes:?}");
    assert!(e
        .events()
        .contains(&("Normal".into(), "VolumeDeleted".into())));
    // The departed pods' certificates are dropped once their pods are gone.
    e.pass().await;
    let tls = e.api.get("secrets", "default", "kv-tls").unwrap();
    assert!(tls["data"]["kv-2.crt"].is_string());
    assert!(tls["data"].get("kv-3.crt").is_none(), "{:?}", tls["data"]);
}

#[tokio::test]
async fn scale_in_interrupted_by_scale_up_ends_at_the_new_size() {
    for k in [1, 3, 6, 10, 20, 30] {
        let e = running(5).await;
        e.scale(3).await;
        for _ in 0..k {
            e.pass().await;
        }
        e.scale(5).await;
        e.settle().await;
        assert_eq!(
            (e.sts_replicas(), e.map_nodes()),
            (5, 5),
            "interrupted after {k} passes"
        );
    }
}

#[tokio::test]
async fn scale_below_n_is_refused_with_degraded_and_a_warning_event() {
    let e = running(3).await;
    e.scale(2).await;
    e.settle().await;
    let st = e.dc().status.unwrap();
    assert_eq!(st.phase, Phase::Degraded);
    let degraded = st
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .unwrap();
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "BelowReplicationFactor")
    );
    assert!(degraded.message.contains("at least 3"));
    assert_eq!((e.sts_replicas(), e.map_nodes()), (3, 3));
    assert!(e
        .events()
        .contains(&("Warning".into(), "BelowReplicationFactor".into())));
    // Repeated refusals are one Event with a growing series, not one Event per pass.
    for _ in 0..3 {
        e.pass().await;
    }
    let refusals = e
        .events()
        .into_iter()
        .filter(|ev| ev.1 == "BelowReplicationFactor")
        .count();
    assert_eq!(refusals, 1);
    assert!(e
        .api
        .requests()
        .iter()
        .any(|r| r.starts_with("PATCH /apis/events.k8s.io/")));
}

#[tokio::test]
async fn an_invalid_spec_is_rejected_with_a_clear_reason_and_nothing_is_built() {
    let e = env();
    e.create(json!({"replicas": 3, "partitions": 100}));
    e.settle().await;
    let st = e.dc().status.unwrap();
    let degraded = st
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .unwrap();
    assert_eq!(degraded.reason, "InvalidSpec");
    assert!(
        degraded.message.contains("power of two"),
        "{}",
        degraded.message
    );
    assert!(e.api.get("statefulsets", "default", "kv").is_none());
    assert!(e
        .events()
        .contains(&("Warning".into(), "InvalidSpec".into())));
}

#[tokio::test]
async fn an_apply_at_a_stale_resource_version_conflicts_and_the_scale_in_still_finishes() {
    let e = running(4).await;
    e.scale(3).await;
    // Run until the operator is about to shrink, then change the StatefulSet behind its back.
    for _ in 0..MAX_PASSES {
        let op = e.dc().status.and_then(|s| s.operation);
        if op.is_some_and(|o| o.step == dynamo_operator::crd::Step::Shrinking) {
            break;
        }
        e.pass().await;
    }
    let observed_rv =
        e.api.get("statefulsets", "default", "kv").unwrap()["metadata"]["resourceVersion"].clone();
    let stale = json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "kv", "resourceVersion": "1"}, "spec": {"replicas": 3}});
    let err = Api::<k8s_openapi::api::apps::v1::StatefulSet>::namespaced(e.api.client(), "default")
        .patch(
            "kv",
            &PatchParams::apply("dynamo-operator").force(),
            &Patch::Apply(&stale),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 409),
        "{err}"
    );
    assert_eq!(
        e.api.get("statefulsets", "default", "kv").unwrap()["metadata"]["resourceVersion"],
        observed_rv
    );
    e.settle().await;
    assert_eq!((e.sts_replicas(), e.map_nodes()), (3, 3));
}

/// Final state of a cluster: StatefulSet replicas, pods, claims, map members.
fn final_state(e: &Env) -> (u64, Vec<String>, Vec<String>, usize) {
    (
        e.sts_replicas(),
        e.names("pods"),
        e.names("persistentvolumeclaims"),
        e.map_nodes(),
    )
}

/// The operator is killed (its pass fails) at every state-changing write of a scale-in:
/// before the write reaches the API server, and after it applied but before the operator
/// saw the answer. The next pass is a restarted operator with nothing but the cluster.
#[tokio::test]
async fn operator_killed_at_every_write_of_a_scale_in_resumes_to_the_same_end() {
    let mut start = running(5).await;
    start.moves = 256; // moves are not what this test is about: keep each run short
    start.scale(3).await;
    let reference = start.fork();
    reference.api.fail_write(u64::MAX, false);
    reference.settle().await;
    let writes = reference.api.writes();
    let expected = final_state(&reference);
    assert!(
        writes >= 8,
        "a scale-in takes several steps ({writes} state-changing writes)"
    );
    for k in 1..=writes {
        for after in [false, true] {
            let e = start.fork();
            e.api.fail_write(k, after);
            e.settle().await;
            assert_eq!(
                final_state(&e),
                expected,
                "killed at write {k} (after: {after})"
            );
        }
    }
}

#[tokio::test]
async fn over_the_nodes_admin_api_a_cluster_is_created_then_scaled_out_and_in() {
    let e = env_over_grpc().await;
    e.create(json!({"replicas": 3}));
    e.settle().await;
    assert_eq!((e.sts_replicas(), e.map_nodes()), (3, 3));
    e.scale(5).await;
    e.settle().await;
    assert_eq!((e.sts_replicas(), e.map_nodes()), (5, 5));
    e.scale(3).await;
    e.settle().await;
    assert_eq!((e.sts_replicas(), e.map_nodes()), (3, 3));
    assert_eq!(e.names("persistentvolumeclaims").len(), 3);
    assert_eq!(
        e.admin.log(),
        [
            "commit 1",
            "finalize 1",
            "commit 2",
            "finalize 2",
            "commit 3",
            "finalize 3"
        ]
    );
    let calls = e.nodes.as_ref().unwrap().transitions();
    assert!(calls.iter().any(|(_, c)| c == "drained kv-4"), "{calls:?}");
}

#[tokio::test]
async fn over_the_nodes_admin_api_a_scale_in_waits_for_an_undrained_node() {
    let e = env_over_grpc().await;
    e.create(json!({"replicas": 5}));
    e.settle().await;
    // kv-4 holds hints it cannot deliver in time: it is not drained.
    e.admin.add_hints("kv-4", 1000);
    e.scale(3).await;
    for _ in 0..40 {
        e.pass().await;
    }
    assert_eq!(e.sts_replicas(), 5);
    assert_eq!(e.names("persistentvolumeclaims").len(), 5);
    let st = e.dc().status.unwrap();
    let progressing = st
        .conditions
        .iter()
        .find(|c| c.type_ == "Progressing")
        .unwrap();
    assert!(
        progressing
            .message
            .contains("waiting for departing nodes to drain: kv-4"),
        "{}",
        progressing.message
    );
    // Scaling back up aborts the pending change safely.
    e.scale(5).await;
    e.settle().await;
    assert_eq!((e.sts_replicas(), e.map_nodes()), (5, 5));
    assert_eq!(e.dc().status.unwrap().phase, Phase::Available);
    assert!(e.admin.log().contains(&"abort 2".to_string()));
}

#[tokio::test]
async fn with_no_node_answering_a_spec_change_still_reaches_the_pod_template() {
    let e = env_over_grpc().await;
    e.create(json!({"replicas": 3}));
    e.settle().await;
    let nodes = e.nodes.as_ref().unwrap();
    nodes.fail("maps", tonic::Code::Unavailable, "crash-looping");
    e.clusters()
        .patch(
            "kv",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"image": "dynamo-node:fixed"}})),
        )
        .await
        .unwrap();
    assert!(!e.pass().await, "the pass fails: the nodes cannot be asked");
    let sts = e.api.get("statefulsets", "default", "kv").unwrap();
    assert_eq!(
        sts["spec"]["template"]["spec"]["containers"][0]["image"],
        "dynamo-node:fixed"
    );
    assert_eq!(sts["spec"]["replicas"], 3);
    nodes.heal("maps");
    e.settle().await;
}

#[tokio::test]
async fn deletion_runs_the_finalizer_and_collects_owned_objects_but_keeps_claims() {
    let e = running(3).await;
    e.clusters()
        .delete("kv", &Default::default())
        .await
        .unwrap();
    assert!(
        e.dc().metadata.deletion_timestamp.is_some(),
        "the finalizer holds the object"
    );
    reconcile(Arc::new(e.dc()), e.ctx.clone()).await.unwrap();
    assert!(e.api.get("dynamoclusters", "default", "kv").is_none());
    assert!(
        e.api.get("statefulsets", "default", "kv").is_none(),
        "owned objects are garbage-collected"
    );
    assert_eq!(
        e.names("persistentvolumeclaims").len(),
        3,
        "volumes are kept"
    );
    assert!(e.events().contains(&("Normal".into(), "Deleted".into())));
}

#[tokio::test]
async fn the_controller_runs_on_watches_until_the_cluster_is_available() {
    let e = env();
    let client = e.api.client();
    let controller = kube::runtime::Controller::new(
        Api::<DynamoCluster>::all(client.clone()),
        Default::default(),
    )
    .owns(
        Api::<k8s_openapi::api::apps::v1::StatefulSet>::all(client),
        Default::default(),
    )
    .run(
        reconcile,
        dynamo_operator::reconcile::error_policy,
        e.ctx.clone(),
    )
    .for_each(|_| async {});
    let handle = tokio::spawn(controller);
    e.create(json!({"replicas": 3}));
    let mut available = false;
    for _ in 0..400 {
        tokio::time::sleep(Duration::from_millis(25)).await;
        e.tick();
        if e.dc()
            .status
            .is_some_and(|s| s.phase == Phase::Available && s.ready_replicas == 3)
        {
            available = true;
            break;
        }
    }
    handle.abort();
    assert!(available, "status: {:?}", e.dc().status);
}

#[tokio::test]
async fn zones_of_the_pods_nodes_reach_the_partition_map() {
    let e = env();
    for (i, zone) in ["eu-1a", "eu-1b", "eu-1c"].iter().enumerate() {
        let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": format!("node-{i}"), "labels": {"topology.kubernetes.io/zone": zone}}});
        e.api
            .with_store(|s| s.create(&("nodes".into(), String::new(), format!("node-{i}")), node))
            .unwrap();
    }
    e.create(json!({"replicas": 3}));
    e.settle().await;
    let map = e.admin.snapshot().current.unwrap();
    let zones: Vec<Option<String>> = map.members.iter().map(|m| m.zone.clone()).collect();
    assert_eq!(
        zones,
        [
            Some("eu-1a".into()),
            Some("eu-1b".into()),
            Some("eu-1c".into())
        ]
    );
    for p in 0..map.partitions {
        let distinct: BTreeSet<_> = map.preference_list(p).map(|m| m.zone.clone()).collect();
        assert_eq!(distinct.len(), 3, "partition {p} spans every zone");
    }
}

fn degraded_reason(e: &Env) -> String {
    let st = e.dc().status.unwrap();
    st.conditions
        .iter()
        .find(|c| c.type_ == "Degraded" && c.status == "True")
        .map(|c| c.reason.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn changing_partitions_is_refused() {
    let e = running(3).await;
    let patch = json!({"spec": {"partitions": 512, "replicas": 4}});
    e.clusters()
        .patch("kv", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    e.settle().await;
    assert_eq!(degraded_reason(&e), "PartitionsImmutable");
    assert_eq!((e.sts_replicas(), e.map_nodes()), (3, 3), "nothing scaled");
    assert!(e
        .events()
        .contains(&("Warning".into(), "PartitionsImmutable".into())));
}

#[tokio::test]
async fn scaling_an_unhealthy_cluster_is_refused_until_it_recovers() {
    let e = running(3).await;
    e.api.set_broken("kv-1", true);
    e.tick();
    e.scale(4).await;
    for _ in 0..5 {
        e.pass().await;
    }
    assert_eq!(degraded_reason(&e), "ClusterUnhealthy");
    assert_eq!(e.sts_replicas(), 3);
    e.api.set_broken("kv-1", false);
    e.tick();
    e.settle().await;
    assert_eq!((e.sts_replicas(), e.map_nodes()), (4, 4));
}

#[tokio::test]
async fn with_cert_manager_no_pod_starts_before_its_certificate_is_issued() {
    let mut e = env();
    e.cert_manager = Some(CertManager::new());
    e.create(json!({"replicas": 3, "tls": {"certManager": {"issuerRef": {"name": "corp", "kind": "ClusterIssuer"}}}}));
    // Until cert-manager issues them, the reconcile waits and names what it waits for;
    // no StatefulSet is made (the first pass only adds the finalizer).
    e.pass().await;
    assert!(!e.pass().await);
    assert!(e.api.get("statefulsets", "default", "kv").is_none());
    assert_eq!(
        e.names("certificates"),
        ["kv-0-tls", "kv-1-tls", "kv-2-tls", "kv-operator"]
    );
    let c = e.api.get("certificates", "default", "kv-1-tls").unwrap();
    assert_eq!(c["spec"]["uris"][0], "dynamo://default/kv/node/kv-1");
    assert_eq!(c["spec"]["issuerRef"]["kind"], "ClusterIssuer");
    e.settle().await;
    let tls = e.api.get("secrets", "default", "kv-tls").unwrap();
    assert!(tls["data"]["kv-2.key"].is_string());
    assert!(
        e.api.get("secrets", "default", "kv-ca").is_none(),
        "with cert-manager the operator makes no CA"
    );
    // A scale-out waits for the new pods' certificates (`tick` checks that no pod exists
    // without its certificate at every pass).
    e.scale(5).await;
    e.settle().await;
    assert_eq!((e.sts_replicas(), e.map_nodes()), (5, 5));
    assert!(e.names("certificates").contains(&"kv-4-tls".to_string()));
}
