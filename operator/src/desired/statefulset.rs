//! The StatefulSet that runs the storage nodes.
//!
//! - Node id = pod name = `<cluster>-<ordinal>` (`DYNAMO_NODE_ID` from the pod name).
//! - `podManagementPolicy: Parallel`: a new pod owns no partition until the operator
//!   commits a map that includes it, so starting pods in order buys no safety; Parallel
//!   makes scale-out faster and avoids the OrderedReady wedge where one unready pod blocks
//!   every later ordinal (and so blocks a user's scale back down).
//! - `persistentVolumeClaimRetentionPolicy` Retain on scale and delete: Kubernetes never
//!   deletes a volume; the operator deletes a departed node's claim itself, and only
//!   after the node handed its partitions off.
//! - Replicas are an input: the scaling state machine, not `spec.replicas`, decides them.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    HTTPGetAction, ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PodAffinityTerm, PodAntiAffinity, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    SecretKeySelector, SecretVolumeSource, SecurityContext, Volume, VolumeMount,
    VolumeResourceRequirements, WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::tls::{CA_CERT, TLS_DIR};
use super::{
    labels, owned_meta, selector_labels, Names, CONFIG_DIR, DATA_DIR, DATA_VOLUME, GRPC_PORT,
    HTTP_PORT, PEER_PORT,
};
use crate::crd::DynamoCluster;

/// Name of the volume of the TLS Secret.
const TLS_VOLUME: &str = "tls";

/// UID and GID the node runs as (matches docker/node.Dockerfile).
pub const NODE_UID: i64 = 10001;

/// The StatefulSet of `dc` with `replicas` pods.
pub fn statefulset(dc: &DynamoCluster, replicas: i32) -> StatefulSet {
    let names = Names::of(dc);
    StatefulSet {
        metadata: owned_meta(dc, names.statefulset()),
        spec: Some(StatefulSetSpec {
            replicas: Some(replicas),
            service_name: Some(names.peer_service()),
            pod_management_policy: Some("Parallel".into()),
            selector: LabelSelector {
                match_labels: Some(selector_labels(&names)),
                ..Default::default()
            },
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_scaled: Some("Retain".into()),
                    when_deleted: Some("Retain".into()),
                },
            ),
            template: pod_template(dc, &names),
            volume_claim_templates: Some(vec![claim_template(dc, &names)]),
            ..Default::default()
        }),
        status: None,
    }
}

fn pod_template(dc: &DynamoCluster, names: &Names) -> PodTemplateSpec {
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels(names)),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            containers: vec![node_container(dc, names)],
            affinity: Some(anti_affinity(dc, names)),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(NODE_UID),
                run_as_group: Some(NODE_UID),
                fs_group: Some(NODE_UID),
                ..Default::default()
            }),
            termination_grace_period_seconds: Some(60),
            volumes: Some(volumes(dc, names)),
            ..Default::default()
        }),
    }
}

fn volumes(dc: &DynamoCluster, names: &Names) -> Vec<Volume> {
    let mut volumes = vec![Volume {
        name: "config".into(),
        config_map: Some(ConfigMapVolumeSource {
            name: names.configmap(),
            ..Default::default()
        }),
        ..Default::default()
    }];
    if dc.spec.tls.enabled {
        // Every pod's certificate in one Secret; each node reads its own by pod name.
        volumes.push(Volume {
            name: TLS_VOLUME.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(names.tls_secret()),
                default_mode: Some(0o440),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    volumes
}

/// The environment that points the node at its TLS files.
fn tls_env() -> Vec<EnvVar> {
    let env = |name: &str, value: String| EnvVar {
        name: name.into(),
        value: Some(value),
        ..Default::default()
    };
    vec![
        env("DYNAMO_TLS_CERT", format!("{TLS_DIR}/$(POD_NAME).crt")),
        env("DYNAMO_TLS_KEY", format!("{TLS_DIR}/$(POD_NAME).key")),
        env("DYNAMO_TLS_CA", format!("{TLS_DIR}/{CA_CERT}")),
    ]
}

fn node_container(dc: &DynamoCluster, names: &Names) -> Container {
    let field = |path: &str| EnvVarSource {
        field_ref: Some(ObjectFieldSelector {
            field_path: path.into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let env = |name: &str, value: &str| EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    };
    Container {
        name: "node".into(),
        image: Some(dc.spec.image.clone()),
        args: Some(vec!["--config".into(), format!("{CONFIG_DIR}/node.yaml")]),
        env: Some(
            vec![
                EnvVar {
                    name: "POD_NAME".into(),
                    value_from: Some(field("metadata.name")),
                    ..Default::default()
                },
                EnvVar {
                    name: "DYNAMO_NODE_ID".into(),
                    value_from: Some(field("metadata.name")),
                    ..Default::default()
                },
                env(
                    "DYNAMO_ADVERTISE",
                    &format!(
                        "$(POD_NAME).{}.{}.svc:{GRPC_PORT}",
                        names.peer_service(),
                        names.namespace
                    ),
                ),
                env(
                    "DYNAMO_PEER_ADVERTISE",
                    &format!(
                        "$(POD_NAME).{}.{}.svc:{PEER_PORT}",
                        names.peer_service(),
                        names.namespace
                    ),
                ),
                env("DYNAMO_CONFIG", &format!("{CONFIG_DIR}/node.yaml")),
                EnvVar {
                    name: "DYNAMO_CLUSTER_SECRET".into(),
                    value_from: Some(EnvVarSource {
                        secret_key_ref: Some(SecretKeySelector {
                            name: names.secret(),
                            key: super::secret::SECRET_KEY.into(),
                            optional: Some(false),
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ]
            .into_iter()
            .chain(dc.spec.tls.enabled.then(tls_env).into_iter().flatten())
            .collect(),
        ),
        ports: Some(vec![
            ContainerPort {
                name: Some("grpc".into()),
                container_port: GRPC_PORT,
                ..Default::default()
            },
            ContainerPort {
                name: Some("peer".into()),
                container_port: PEER_PORT,
                ..Default::default()
            },
            ContainerPort {
                name: Some("http".into()),
                container_port: HTTP_PORT,
                ..Default::default()
            },
        ]),
        readiness_probe: Some(http_probe("/readyz", 5, 3)),
        liveness_probe: Some(http_probe("/healthz", 10, 6)),
        resources: dc.spec.resources.clone(),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volume_mounts: Some(
            [
                (DATA_VOLUME, DATA_DIR, false),
                ("config", CONFIG_DIR, true),
                (TLS_VOLUME, TLS_DIR, true),
            ]
            .into_iter()
            .filter(|(volume, ..)| *volume != TLS_VOLUME || dc.spec.tls.enabled)
            .map(|(volume, path, read_only)| VolumeMount {
                name: volume.into(),
                mount_path: path.into(),
                read_only: read_only.then_some(true),
                ..Default::default()
            })
            .collect(),
        ),
        ..Default::default()
    }
}

fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Default::default()
    }
}

/// Spread nodes across zones first, then hosts. Preferred, not required: a cluster of 5
/// in 3 zones must still schedule; the planner spreads replicas across zones anyway.
fn anti_affinity(dc: &DynamoCluster, names: &Names) -> Affinity {
    let term = |key: &str, weight: i32| WeightedPodAffinityTerm {
        weight,
        pod_affinity_term: PodAffinityTerm {
            topology_key: key.into(),
            label_selector: Some(LabelSelector {
                match_labels: Some(selector_labels(names)),
                ..Default::default()
            }),
            ..Default::default()
        },
    };
    Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                term(&dc.spec.zone_topology_key, 100),
                term("kubernetes.io/hostname", 50),
            ]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The claim template. Its labels let the operator find (and check) a cluster's claims.
fn claim_template(dc: &DynamoCluster, names: &Names) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(DATA_VOLUME.into()),
            labels: Some(labels(names)),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: dc.spec.storage.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".into(),
                    Quantity(dc.spec.storage.size.clone()),
                )])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The container's environment variable `name`.
    fn env_var<'a>(c: &'a Container, name: &str) -> &'a EnvVar {
        c.env
            .as_ref()
            .and_then(|env| env.iter().find(|e| e.name == name))
            .unwrap_or_else(|| panic!("no {name} in the container's environment"))
    }
    use crate::testing::cluster;

    #[test]
    fn statefulset_has_ordinal_ids_probes_and_retained_volumes() {
        let dc = cluster("kv", 3);
        let sts = statefulset(&dc, 4);
        let spec = sts.spec.as_ref().unwrap();
        assert_eq!(
            spec.replicas,
            Some(4),
            "replicas come from the caller, not spec.replicas"
        );
        assert_eq!(spec.service_name.as_deref(), Some("kv-peers"));
        assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
        let policy = spec
            .persistent_volume_claim_retention_policy
            .as_ref()
            .unwrap();
        assert_eq!(policy.when_scaled.as_deref(), Some("Retain"));
        assert_eq!(policy.when_deleted.as_deref(), Some("Retain"));
        let pod = spec.template.spec.as_ref().unwrap();
        let c = &pod.containers[0];
        let node_id = env_var(c, "DYNAMO_NODE_ID");
        assert_eq!(
            node_id
                .value_from
                .as_ref()
                .unwrap()
                .field_ref
                .as_ref()
                .unwrap()
                .field_path,
            "metadata.name"
        );
        let advertise = env_var(c, "DYNAMO_ADVERTISE");
        assert_eq!(
            advertise.value.as_deref(),
            Some("$(POD_NAME).kv-peers.default.svc:7100")
        );
        let peer = env_var(c, "DYNAMO_PEER_ADVERTISE");
        assert_eq!(
            peer.value.as_deref(),
            Some("$(POD_NAME).kv-peers.default.svc:7101")
        );
        assert_eq!(
            c.readiness_probe
                .as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap()
                .path
                .as_deref(),
            Some("/readyz")
        );
        assert_eq!(
            c.liveness_probe
                .as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap()
                .path
                .as_deref(),
            Some("/healthz")
        );
        assert_eq!(
            c.security_context
                .as_ref()
                .unwrap()
                .read_only_root_filesystem,
            Some(true)
        );
        assert_eq!(
            pod.security_context.as_ref().unwrap().run_as_non_root,
            Some(true)
        );
    }

    #[test]
    fn with_tls_each_pod_mounts_the_certificates_and_reads_its_own() {
        let dc = cluster("kv", 3);
        let sts = statefulset(&dc, 3);
        let pod = sts.spec.unwrap().template.spec.unwrap();
        let volume = pod
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == "tls")
            .unwrap();
        assert_eq!(
            volume.secret.unwrap().secret_name.as_deref(),
            Some("kv-tls")
        );
        let c = &pod.containers[0];
        assert_eq!(
            env_var(c, "DYNAMO_TLS_CERT").value.as_deref(),
            Some("/etc/dynamo-tls/$(POD_NAME).crt")
        );
        assert_eq!(
            env_var(c, "DYNAMO_TLS_KEY").value.as_deref(),
            Some("/etc/dynamo-tls/$(POD_NAME).key")
        );
        assert_eq!(
            env_var(c, "DYNAMO_TLS_CA").value.as_deref(),
            Some("/etc/dynamo-tls/ca.crt")
        );
        // POD_NAME is defined before the variables that refer to it.
        let names: Vec<_> = c
            .env
            .as_ref()
            .unwrap()
            .iter()
            .map(|e| e.name.as_str())
            .collect();
        let at = |n: &str| names.iter().position(|x| *x == n).unwrap();
        assert!(at("POD_NAME") < at("DYNAMO_TLS_CERT"));
        let mount = c
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.name == "tls")
            .unwrap();
        assert_eq!(mount.mount_path, "/etc/dynamo-tls");
        assert_eq!(mount.read_only, Some(true));

        let mut plain = cluster("kv", 3);
        plain.spec.tls.enabled = false;
        let pod = statefulset(&plain, 3).spec.unwrap().template.spec.unwrap();
        assert!(pod.volumes.unwrap().iter().all(|v| v.name != "tls"));
        let c = &pod.containers[0];
        assert!(c
            .env
            .as_ref()
            .unwrap()
            .iter()
            .all(|e| !e.name.starts_with("DYNAMO_TLS")));
        assert!(c
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .all(|m| m.name != "tls"));
    }

    #[test]
    fn anti_affinity_uses_the_zone_topology_key() {
        let mut dc = cluster("kv", 3);
        dc.spec.zone_topology_key = "example.com/rack".into();
        let sts = statefulset(&dc, 3);
        let aff = sts.spec.unwrap().template.spec.unwrap().affinity.unwrap();
        let terms = aff
            .pod_anti_affinity
            .unwrap()
            .preferred_during_scheduling_ignored_during_execution
            .unwrap();
        assert_eq!(terms[0].pod_affinity_term.topology_key, "example.com/rack");
        assert_eq!(
            terms[1].pod_affinity_term.topology_key,
            "kubernetes.io/hostname"
        );
    }

    #[test]
    fn claim_template_uses_storage_spec_and_owner_is_the_cluster() {
        let mut dc = cluster("kv", 3);
        dc.spec.storage.size = "50Gi".into();
        dc.spec.storage.storage_class_name = Some("fast".into());
        let sts = statefulset(&dc, 3);
        let owner = &sts.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.controller),
            ("DynamoCluster", "kv", Some(true))
        );
        let claim = &sts.spec.unwrap().volume_claim_templates.unwrap()[0];
        let spec = claim.spec.as_ref().unwrap();
        assert_eq!(spec.storage_class_name.as_deref(), Some("fast"));
        assert_eq!(
            spec.resources.as_ref().unwrap().requests.as_ref().unwrap()["storage"].0,
            "50Gi"
        );
    }
}
