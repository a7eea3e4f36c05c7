//! What to run for a pod: the program its image names, with the arguments, environment and
//! files its spec gives it, every address mapped to a loopback port.
//!
//! The mapping, for the pods of a StatefulSet whose containers name ports `grpc` and
//! `http` (the storage nodes) and pods whose containers name a port `http` (the operator):
//! - container port named `grpc` of ordinal `i` → `127.0.0.1:<grpc base + i>`, `http` →
//!   `127.0.0.1:<http base + i>` (nodes), or `127.0.0.1:<operator base + slot>`;
//! - `0.0.0.0:<container port>` (a listen address) → that loopback address;
//! - `<pod>.<subdomain>.<ns>.svc:<port>` (a pod's stable DNS name) → the loopback address of
//!   that pod's ordinal; `<subdomain>.<ns>.svc:<port>` (the headless Service) → every pod of
//!   the StatefulSet that exists, as a list item expands, else ordinal 0;
//! - a volume's mount path → a host directory: a ConfigMap's keys written out (their text
//!   mapped as above), a Secret's keys written out as they are, a claim's directory kept by claim UID (a new claim of the same name
//!   starts empty, like a new volume), an emptyDir per pod.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _, Result};
use k8s_openapi::api::core::v1::{ConfigMap, Container, PersistentVolumeClaim, Pod, Secret};
use kube::{Api, ResourceExt};

/// Which program a pod runs, from its image's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Node,
    Operator,
}

impl Kind {
    pub fn of(image: &str) -> Option<Self> {
        let name = image.rsplit('/').next().unwrap_or(image);
        let name = name.split([':', '@']).next().unwrap_or(name);
        match name {
            "dynamo-node" => Some(Self::Node),
            "dynamo-operator" => Some(Self::Operator),
            _ => None,
        }
    }
    pub fn program(self) -> &'static str {
        match self {
            Self::Node => "dynamo-node",
            Self::Operator => "dynamo-operator",
        }
    }
}

/// Loopback port bases.
#[derive(Clone, Debug)]
pub struct Ports {
    pub node_grpc: u16,
    pub node_peer: u16,
    pub node_http: u16,
    pub operator_http: u16,
}

/// A process to start for a pod.
#[derive(Debug)]
pub struct Launch {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// `http://127.0.0.1:<port><path>` of the readiness probe.
    pub ready_url: Option<String>,
    /// Loopback addresses the process listens on: only one process may hold them.
    pub slots: Vec<String>,
}

/// Everything the launch of one pod reads.
pub struct Inputs<'a> {
    pub client: &'a kube::Client,
    pub pod: &'a Pod,
    /// Every pod on the node (for the headless Service's addresses).
    pub pods: &'a [Pod],
    pub ports: &'a Ports,
    /// Slot of an operator pod (its port offset).
    pub slot: u16,
    pub bin_dir: &'a Path,
    pub work_dir: &'a Path,
    /// Written for pods that run with a ServiceAccount token.
    pub api_server: &'a str,
    pub ca_file: &'a Path,
}

/// Ordinal of a StatefulSet pod name (`<set>-<n>`).
pub fn ordinal(pod_name: &str) -> Option<u16> {
    pod_name.rsplit_once('-')?.1.parse().ok()
}

/// How one pod's names and ports map to loopback.
struct Mapper {
    ns: String,
    /// The pod's subdomain (its StatefulSet's headless Service), if any.
    subdomain: Option<String>,
    /// Container port → base port (ordinal pods) or fixed port.
    ports: BTreeMap<i32, u16>,
    ordinal_based: bool,
    own_offset: u16,
    /// Ordinals of the pods that exist under the same subdomain.
    peers: Vec<u16>,
    mounts: Vec<(String, PathBuf)>,
}

impl Mapper {
    fn port(&self, container_port: i32, offset: u16) -> Option<u16> {
        let base = *self.ports.get(&container_port)?;
        Some(if self.ordinal_based {
            base + offset
        } else {
            base
        })
    }

    /// A string mapped to its loopback equivalents (several for the headless Service).
    fn map(&self, s: &str) -> Vec<String> {
        if let Some((host, port)) = s.rsplit_once(':') {
            if let Ok(port) = port.parse::<i32>() {
                if host == "0.0.0.0" || host == "[::]" {
                    if let Some(p) = self.port(port, self.own_offset) {
                        return vec![format!("127.0.0.1:{p}")];
                    }
                }
                if let Some(sub) = &self.subdomain {
                    let svc = format!("{sub}.{}.svc", self.ns);
                    let svc_fq = format!("{svc}.cluster.local");
                    if host == svc || host == svc_fq {
                        let ords = if self.peers.is_empty() {
                            vec![0]
                        } else {
                            self.peers.clone()
                        };
                        let mapped: Vec<String> = ords
                            .iter()
                            .filter_map(|&o| self.port(port, o))
                            .map(|p| format!("127.0.0.1:{p}"))
                            .collect();
                        if !mapped.is_empty() {
                            return mapped;
                        }
                    }
                    let pod_host = host
                        .strip_suffix(&format!(".{svc}"))
                        .or_else(|| host.strip_suffix(&format!(".{svc_fq}")));
                    if let Some(p) = pod_host.and_then(ordinal).and_then(|o| self.port(port, o)) {
                        return vec![format!("127.0.0.1:{p}")];
                    }
                }
            }
        }
        for (mount, host_dir) in &self.mounts {
            if let Some(rest) = s.strip_prefix(mount.as_str()) {
                if rest.is_empty() || rest.starts_with('/') {
                    return vec![format!("{}{rest}", host_dir.display())];
                }
            }
        }
        vec![s.to_string()]
    }

    fn map_one(&self, s: &str) -> String {
        self.map(s).join(",")
    }

    /// A YAML document with every string mapped (list items may expand).
    fn map_yaml(&self, v: serde_yaml::Value) -> serde_yaml::Value {
        use serde_yaml::Value;
        match v {
            Value::String(s) => Value::String(self.map_one(&s)),
            Value::Sequence(items) => Value::Sequence(
                items
                    .into_iter()
                    .flat_map(|i| match i {
                        Value::String(s) => self.map(&s).into_iter().map(Value::String).collect(),
                        other => vec![self.map_yaml(other)],
                    })
                    .collect(),
            ),
            Value::Mapping(m) => {
                Value::Mapping(m.into_iter().map(|(k, v)| (k, self.map_yaml(v))).collect())
            }
            other => other,
        }
    }
}

/// Expands `$(VAR)` references to variables defined earlier, as the kubelet does.
fn expand(s: &str, vars: &[(String, String)]) -> String {
    let mut out = s.to_string();
    for (k, v) in vars {
        out = out.replace(&format!("$({k})"), v);
    }
    out
}

pub async fn launch(i: Inputs<'_>) -> Result<Launch> {
    let pod = i.pod;
    let ns = pod.namespace().unwrap_or_else(|| "default".into());
    let spec = pod
        .spec
        .as_ref()
        .ok_or_else(|| anyhow!("pod without spec"))?;
    let c: &Container = spec
        .containers
        .first()
        .ok_or_else(|| anyhow!("pod without containers"))?;
    let image = c.image.clone().unwrap_or_default();
    let kind = Kind::of(&image).ok_or_else(|| anyhow!("no program for image {image}"))?;
    let pod_dir = i.work_dir.join("pods").join(format!(
        "{ns}_{}_{}",
        pod.name_any(),
        pod.uid().unwrap_or_default()
    ));
    std::fs::create_dir_all(&pod_dir)?;

    let (ordinal_based, own_offset) = match kind {
        Kind::Node => (
            true,
            ordinal(&pod.name_any()).ok_or_else(|| anyhow!("node pod without an ordinal"))?,
        ),
        Kind::Operator => (false, i.slot),
    };
    let mut ports = BTreeMap::new();
    for p in c.ports.iter().flatten() {
        let base = match (kind, p.name.as_deref()) {
            (Kind::Node, Some("grpc")) => i.ports.node_grpc,
            (Kind::Node, Some("peer")) => i.ports.node_peer,
            (Kind::Node, Some("http")) => i.ports.node_http,
            (Kind::Operator, Some("http")) => i.ports.operator_http + i.slot,
            _ => bail!("no loopback port for container port {:?}", p.name),
        };
        ports.insert(p.container_port, base);
    }
    let subdomain = spec.subdomain.clone();
    let peers: Vec<u16> = i
        .pods
        .iter()
        .filter(|p| p.namespace().as_deref() == Some(ns.as_str()))
        .filter(|p| p.spec.as_ref().and_then(|s| s.subdomain.clone()) == subdomain)
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| ordinal(&p.name_any()))
        .collect();
    let mut m = Mapper {
        ns: ns.clone(),
        subdomain,
        ports,
        ordinal_based,
        own_offset,
        peers,
        mounts: vec![],
    };

    // Volumes.
    let configmaps: Api<ConfigMap> = Api::namespaced(i.client.clone(), &ns);
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(i.client.clone(), &ns);
    let mut volume_dirs = BTreeMap::new();
    let mut configmap_files = vec![];
    for v in spec.volumes.iter().flatten() {
        let dir = if let Some(cm) = &v.config_map {
            let dir = pod_dir.join(format!("configmap-{}", v.name));
            std::fs::create_dir_all(&dir)?;
            let obj = configmaps
                .get(&cm.name)
                .await
                .with_context(|| format!("configmap {}", cm.name))?;
            for (k, text) in obj.data.unwrap_or_default() {
                configmap_files.push((dir.join(k), text));
            }
            dir
        } else if let Some(secret) = &v.secret {
            // The Secret's keys as files, their bytes as they are (certificates, keys).
            let dir = pod_dir.join(format!("secret-{}", v.name));
            std::fs::create_dir_all(&dir)?;
            let name = secret.secret_name.clone().unwrap_or_default();
            let obj = Api::<Secret>::namespaced(i.client.clone(), &ns)
                .get(&name)
                .await
                .with_context(|| format!("secret {name}"))?;
            for (k, bytes) in obj.data.unwrap_or_default() {
                std::fs::write(dir.join(k), bytes.0)?;
            }
            dir
        } else if let Some(pvc) = &v.persistent_volume_claim {
            let obj = claims
                .get(&pvc.claim_name)
                .await
                .with_context(|| format!("claim {}", pvc.claim_name))?;
            i.work_dir.join("volumes").join(format!(
                "{}-{}",
                pvc.claim_name,
                obj.uid().unwrap_or_default()
            ))
        } else {
            pod_dir.join(format!("volume-{}", v.name))
        };
        std::fs::create_dir_all(&dir)?;
        volume_dirs.insert(v.name.clone(), dir);
    }
    for vm in c.volume_mounts.iter().flatten() {
        let dir = volume_dirs
            .get(&vm.name)
            .ok_or_else(|| anyhow!("mount of unknown volume {}", vm.name))?;
        m.mounts.push((vm.mount_path.clone(), dir.clone()));
    }
    // Longest mount path first, so nested mounts win.
    m.mounts.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
    for (path, text) in configmap_files {
        let mapped = match serde_yaml::from_str::<serde_yaml::Value>(&text) {
            Ok(doc @ serde_yaml::Value::Mapping(_)) => serde_yaml::to_string(&m.map_yaml(doc))?,
            _ => text,
        };
        std::fs::write(&path, mapped)?;
    }

    // Environment, in order, with `$(VAR)` expansion.
    let secrets: Api<Secret> = Api::namespaced(i.client.clone(), &ns);
    let mut env: Vec<(String, String)> = vec![];
    for e in c.env.iter().flatten() {
        let value = if let Some(v) = &e.value {
            m.map_one(&expand(v, &env))
        } else if let Some(from) = &e.value_from {
            if let Some(f) = &from.field_ref {
                match f.field_path.as_str() {
                    "metadata.name" => pod.name_any(),
                    "metadata.namespace" => ns.clone(),
                    "spec.nodeName" => spec.node_name.clone().unwrap_or_default(),
                    "spec.serviceAccountName" => {
                        spec.service_account_name.clone().unwrap_or_default()
                    }
                    other => bail!("env {}: field {other} not supported", e.name),
                }
            } else if let Some(s) = &from.secret_key_ref {
                let obj = secrets
                    .get(&s.name)
                    .await
                    .with_context(|| format!("secret {}", s.name))?;
                let bytes = obj
                    .data
                    .unwrap_or_default()
                    .remove(&s.key)
                    .ok_or_else(|| anyhow!("secret {} has no key {}", s.name, s.key))?;
                String::from_utf8(bytes.0)?
            } else {
                bail!("env {}: source not supported", e.name)
            }
        } else {
            String::new()
        };
        env.push((e.name.clone(), value));
    }
    let args = c
        .args
        .iter()
        .flatten()
        .map(|a| m.map_one(&expand(a, &env)))
        .collect();

    if kind == Kind::Operator {
        // The pod's ServiceAccount token, as the kubelet projects it, in a kubeconfig.
        let sa = spec.service_account_name.as_deref().unwrap_or("default");
        let token = crate::token::for_pod(i.client, &ns, sa, pod).await?;
        let kubeconfig = pod_dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            crate::token::kubeconfig(i.api_server, i.ca_file, &ns, &token),
        )?;
        env.push(("KUBECONFIG".into(), kubeconfig.display().to_string()));
        if !env
            .iter()
            .any(|(k, _)| k == "DYNAMO_OPERATOR_PEER_ADDRESSING")
        {
            env.push((
                "DYNAMO_OPERATOR_PEER_ADDRESSING".into(),
                format!("host-ports=127.0.0.1:{}", i.ports.node_peer),
            ));
        }
    }

    let ready_url = c
        .readiness_probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref())
        .and_then(|h| {
            let port = match &h.port {
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n) => *n,
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(name) => {
                    c.ports
                        .iter()
                        .flatten()
                        .find(|p| p.name.as_deref() == Some(name))?
                        .container_port
                }
            };
            let p = m.port(port, own_offset)?;
            Some(format!(
                "http://127.0.0.1:{p}{}",
                h.path.clone().unwrap_or_else(|| "/".into())
            ))
        });
    let slots = c
        .ports
        .iter()
        .flatten()
        .filter_map(|p| m.port(p.container_port, own_offset))
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    Ok(Launch {
        program: i.bin_dir.join(kind.program()),
        args,
        env,
        ready_url,
        slots,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapper() -> Mapper {
        Mapper {
            ns: "ns".into(),
            subdomain: Some("demo-peers".into()),
            ports: BTreeMap::from([(7100, 7300), (7101, 7340), (7180, 7380)]),
            ordinal_based: true,
            own_offset: 2,
            peers: vec![0, 1, 2],
            mounts: vec![("/var/lib/dynamo".into(), PathBuf::from("/tmp/v"))],
        }
    }

    #[test]
    fn addresses_and_paths_map_to_loopback() {
        let m = mapper();
        assert_eq!(m.map("0.0.0.0:7180"), ["127.0.0.1:7382"]);
        assert_eq!(m.map("demo-1.demo-peers.ns.svc:7100"), ["127.0.0.1:7301"]);
        assert_eq!(
            m.map("demo-peers.ns.svc:7100"),
            ["127.0.0.1:7300", "127.0.0.1:7301", "127.0.0.1:7302"]
        );
        assert_eq!(m.map("/var/lib/dynamo"), ["/tmp/v"]);
        assert_eq!(m.map("/var/lib/dynamo/x"), ["/tmp/v/x"]);
        assert_eq!(m.map("/var/lib/dynamox"), ["/var/lib/dynamox"]);
        assert_eq!(m.map("other.ns.svc:7100"), ["other.ns.svc:7100"]);
        let yaml: serde_yaml::Value =
            serde_yaml::from_str("seeds: [demo-peers.ns.svc:7100]\nlisten: 0.0.0.0:7100\n")
                .unwrap();
        let out = m.map_yaml(yaml);
        assert_eq!(out["seeds"].as_sequence().unwrap().len(), 3);
        assert_eq!(out["listen"].as_str(), Some("127.0.0.1:7302"));
        let yaml: serde_yaml::Value =
            serde_yaml::from_str("seeds: [demo-peers.ns.svc:7101]\npeer_listen: 0.0.0.0:7101\n")
                .unwrap();
        let out = m.map_yaml(yaml);
        assert_eq!(
            out["seeds"].as_sequence().unwrap()[1].as_str(),
            Some("127.0.0.1:7341")
        );
        assert_eq!(out["peer_listen"].as_str(), Some("127.0.0.1:7342"));
        assert_eq!(m.map("demo-1.demo-peers.ns.svc:7101"), ["127.0.0.1:7341"]);
    }

    #[test]
    fn images_name_programs() {
        assert_eq!(Kind::of("dynamo-node:0.1.0"), Some(Kind::Node));
        assert_eq!(
            Kind::of("registry.example.com/dynamo/dynamo-operator:0.1.0"),
            Some(Kind::Operator)
        );
        assert_eq!(Kind::of("busybox"), None);
        assert_eq!(expand("$(A).x", &[("A".into(), "a".into())]), "a.x");
    }
}
