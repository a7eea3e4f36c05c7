//! A simulated StatefulSet controller and kubelet for the fake API, run one round at a
//! time by tests (envtest-style suites do the same: there is no kube-controller-manager).
//! Per StatefulSet: claims from the claim templates are created for ordinals below
//! `replicas` and never deleted (retention policy Retain); pods are created by ordinal,
//! become Ready the round after (unless marked broken), and pods at or above `replicas`
//! get a deletionTimestamp, then disappear the round after. Pods are scheduled on the
//! Kubernetes nodes `node-0`, `node-1`, `node-2` by ordinal.

use serde_json::{json, Value};

use super::store::Part;
use super::FakeApi;

impl FakeApi {
    /// Marks a pod as never becoming ready (or heals it).
    pub fn set_broken(&self, pod: &str, broken: bool) {
        let mut b = self.broken.lock();
        if broken {
            b.insert(pod.to_string());
        } else {
            b.remove(pod);
        }
    }

    /// One round of the StatefulSet controller and the kubelet.
    pub fn run_statefulset_controller(&self) {
        let broken = self.broken.lock().clone();
        self.with_store(|store| {
            let all: Vec<Value> = store.objects.iter().filter(|(k, _)| k.0 == "statefulsets").map(|(_, v)| v.clone()).collect();
            for sts in all {
                let ns = sts["metadata"]["namespace"].as_str().unwrap_or_default().to_string();
                let name = sts["metadata"]["name"].as_str().unwrap_or_default().to_string();
                let replicas = sts["spec"]["replicas"].as_u64().unwrap_or(1) as u32;
                let pods: Vec<(u32, Value)> = store
                    .list("pods", Some(&ns), &[])
                    .into_iter()
                    .filter_map(|p| {
                        let pname = p["metadata"]["name"].as_str()?.to_string();
                        let ord = pname.strip_prefix(&format!("{name}-"))?.parse().ok()?;
                        Some((ord, p))
                    })
                    .collect();
                for (ord, pod) in &pods {
                    let key = ("pods".to_string(), ns.clone(), format!("{name}-{ord}"));
                    if *ord >= replicas {
                        if pod["metadata"].get("deletionTimestamp").is_some() {
                            store.remove(&key);
                        } else {
                            // Graceful termination: marked now, gone next round.
                            let mut p = pod.clone();
                            p["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:02Z");
                            p["status"]["conditions"] = json!([{"type": "Ready", "status": "False"}]);
                            store.objects.insert(key, p);
                        }
                    } else {
                        let ready = !broken.contains(&format!("{name}-{ord}"));
                        let mut p = pod.clone();
                        p["status"] = json!({"phase": "Running", "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]});
                        p["metadata"].as_object_mut().map(|m| m.remove("resourceVersion"));
                        let _ = store.write(&key, p, Part::Status);
                    }
                }
                for ord in 0..replicas {
                    self.create_claims(store, &sts, &ns, &name, ord);
                    let pod_name = format!("{name}-{ord}");
                    if !pods.iter().any(|(o, _)| *o == ord) {
                        let labels = sts["spec"]["template"]["metadata"]["labels"].clone();
                        let mut spec = sts["spec"]["template"]["spec"].clone();
                        spec["nodeName"] = json!(format!("node-{}", ord % 3));
                        let pod = json!({
                            "apiVersion": "v1", "kind": "Pod",
                            "metadata": {"name": pod_name, "namespace": ns, "labels": labels,
                                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": name,
                                    "uid": sts["metadata"]["uid"], "controller": true}]},
                            "spec": spec,
                            "status": {"phase": "Pending", "conditions": [{"type": "Ready", "status": "False"}]},
                        });
                        let _ = store.create(&("pods".into(), ns.clone(), pod_name), pod);
                    }
                }
                let pods = store.list("pods", Some(&ns), &[]);
                let ours = |p: &&Value| p["metadata"]["name"].as_str().is_some_and(|n| n.starts_with(&format!("{name}-")));
                let count = pods.iter().filter(ours).count();
                let ready = pods.iter().filter(ours).filter(|p| p["status"]["conditions"][0]["status"] == "True").count();
                let mut s = store.objects.get(&("statefulsets".into(), ns.clone(), name.clone())).cloned().unwrap_or_default();
                s["status"] = json!({"replicas": count, "readyReplicas": ready, "observedGeneration": s["metadata"]["generation"]});
                s["metadata"].as_object_mut().map(|m| m.remove("resourceVersion"));
                let _ = store.write(&("statefulsets".into(), ns, name), s, Part::Status);
            }
        });
    }

    fn create_claims(
        &self,
        store: &mut super::store::Store,
        sts: &Value,
        ns: &str,
        name: &str,
        ord: u32,
    ) {
        for tpl in sts["spec"]["volumeClaimTemplates"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            let claim = format!(
                "{}-{name}-{ord}",
                tpl["metadata"]["name"].as_str().unwrap_or("data")
            );
            let key = (
                "persistentvolumeclaims".to_string(),
                ns.to_string(),
                claim.clone(),
            );
            if !store.objects.contains_key(&key) {
                let pvc = json!({
                    "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                    "metadata": {"name": claim, "namespace": ns, "labels": tpl["metadata"]["labels"]},
                    "spec": tpl["spec"],
                    "status": {"phase": "Bound"},
                });
                let _ = store.create(&key, pvc);
            }
        }
    }
}
