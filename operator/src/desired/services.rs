//! The two Services of a cluster.
//!
//! - `<name>-peers`: headless, `publishNotReadyAddresses: true`, so every pod has a stable
//!   DNS name (`<pod>.<name>-peers.<ns>.svc`) from the moment it exists; nodes find peers
//!   (and the operator finds nodes) before they pass readiness, which a joining node needs.
//!   It names the peer port besides the others.
//! - `<name>`: the client Service, load-balancing the client API over ready nodes only; it
//!   has no peer port (the chart's NetworkPolicy keeps clients off it on the pods too).

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{owned_meta, selector_labels, Names, GRPC_PORT, HTTP_PORT, PEER_PORT};
use crate::crd::DynamoCluster;

fn port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}

/// The client API and HTTP (health, metrics).
fn ports() -> Vec<ServicePort> {
    vec![port("grpc", GRPC_PORT), port("http", HTTP_PORT)]
}

/// The headless peer-discovery Service.
pub fn peer_service(dc: &DynamoCluster) -> Service {
    let names = Names::of(dc);
    Service {
        metadata: owned_meta(dc, names.peer_service()),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(&names)),
            ports: Some([ports(), vec![port("peer", PEER_PORT)]].concat()),
            ..Default::default()
        }),
        status: None,
    }
}

/// The client Service.
pub fn client_service(dc: &DynamoCluster) -> Service {
    let names = Names::of(dc);
    Service {
        metadata: owned_meta(dc, names.client_service()),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector_labels(&names)),
            ports: Some(ports()),
            ..Default::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::cluster;

    #[test]
    fn peer_service_is_headless_and_publishes_not_ready_pods() {
        let svc = peer_service(&cluster("kv", 3));
        assert_eq!(svc.metadata.name.as_deref(), Some("kv-peers"));
        let spec = svc.spec.unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.publish_not_ready_addresses, Some(true));
        assert_eq!(spec.selector.unwrap()["app.kubernetes.io/instance"], "kv");
        let ports: Vec<i32> = spec.ports.unwrap().iter().map(|p| p.port).collect();
        assert_eq!(ports, [7100, 7180, 7101]);
    }

    #[test]
    fn client_service_exposes_grpc() {
        let svc = client_service(&cluster("kv", 3));
        assert_eq!(svc.metadata.name.as_deref(), Some("kv"));
        let spec = svc.spec.unwrap();
        assert_eq!(
            spec.publish_not_ready_addresses, None,
            "clients only reach ready nodes"
        );
        let ports: Vec<i32> = spec.ports.unwrap().iter().map(|p| p.port).collect();
        assert_eq!(ports, [7100, 7180], "no peer port for clients");
    }
}
