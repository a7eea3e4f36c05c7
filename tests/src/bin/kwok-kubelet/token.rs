//! A ServiceAccount token bound to a pod (the TokenRequest API, as the kubelet projects
//! one), and a kubeconfig that authenticates with it: a process run for the pod has the
//! pod's own permissions, nothing more.

use std::path::Path;

use anyhow::{anyhow, Result};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::PostParams;
use kube::{Api, ResourceExt};

pub async fn for_pod(client: &kube::Client, ns: &str, sa: &str, pod: &Pod) -> Result<String> {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let req = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![],
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(pod.name_any()),
                uid: pod.uid(),
            }),
            expiration_seconds: Some(3600),
        },
        ..Default::default()
    };
    let out = api
        .create_token_request(sa, &PostParams::default(), &req)
        .await?;
    out.status
        .map(|s| s.token)
        .ok_or_else(|| anyhow!("token request for {ns}/{sa} returned no token"))
}

pub fn kubeconfig(server: &str, ca_file: &Path, ns: &str, token: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: {server}
    certificate-authority: {ca}
users:
- name: pod
  user:
    token: {token}
contexts:
- name: local
  context: {{cluster: local, user: pod, namespace: {ns}}}
current-context: local
",
        ca = ca_file.display()
    )
}
