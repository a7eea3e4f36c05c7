//! The admin side used against real nodes until the nodes' admin gRPC service exists (a
//! later issue): the live map versions are kept in a ConfigMap `<cluster>-partition-map`
//! (keys `current` and `pending`, JSON), owned by the cluster.
//!
//! Because the nodes cannot move partitions yet, this side is deliberately conservative:
//! - `members` are the ready pods;
//! - `progress` reports no moves (there is no data movement to wait for on scale-out);
//! - `drained` is always **false**: nothing can confirm that a departing node handed its
//!   data off, so a scale-in on real nodes stops at the Moving step and waits, and never
//!   shrinks the StatefulSet or deletes a volume. Scaling back up aborts it safely.

use std::collections::{BTreeMap, BTreeSet};

use dynamo_core::ring::{NodeId, PartitionMap};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::ResourceExt;

use super::{AdminError, ClusterAdmin, MapState, MoveProgress};
use crate::crd::DynamoCluster;
use crate::desired::{owned_meta, selector_string, Names, MANAGER};

/// Map versions in a ConfigMap; see the module docs for what it can and cannot confirm.
pub struct ConfigMapAdmin {
    dc: DynamoCluster,
    names: Names,
    configmaps: Api<ConfigMap>,
    pods: Api<Pod>,
}

fn unavailable(e: kube::Error) -> AdminError {
    AdminError::Unavailable(e.to_string())
}

impl ConfigMapAdmin {
    pub fn new(client: kube::Client, dc: &DynamoCluster) -> Self {
        let names = Names::of(dc);
        Self {
            configmaps: Api::namespaced(client.clone(), &names.namespace),
            pods: Api::namespaced(client, &names.namespace),
            dc: dc.clone(),
            names,
        }
    }

    fn name(&self) -> String {
        format!("{}-partition-map", self.names.cluster)
    }

    async fn write(&self, state: &MapState) -> Result<(), AdminError> {
        let mut data = BTreeMap::from([("version".to_string(), state.version.to_string())]);
        for (key, map) in [("current", &state.current), ("pending", &state.pending)] {
            if let Some(m) = map {
                data.insert(
                    key.to_string(),
                    serde_json::to_string(m).expect("a map serializes"),
                );
            }
        }
        let cm = ConfigMap {
            metadata: owned_meta(&self.dc, self.name()),
            data: Some(data),
            ..Default::default()
        };
        self.configmaps
            .patch(
                &self.name(),
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&cm),
            )
            .await
            .map(|_| ())
            .map_err(unavailable)
    }
}

fn parse(data: &BTreeMap<String, String>, key: &str) -> Result<Option<PartitionMap>, AdminError> {
    let Some(json) = data.get(key) else {
        return Ok(None);
    };
    let map: PartitionMap = serde_json::from_str(json)
        .map_err(|e| AdminError::Unavailable(format!("bad {key} map: {e}")))?;
    Ok(Some(map.rebuild()?))
}

impl ClusterAdmin for ConfigMapAdmin {
    async fn members(&self) -> Result<BTreeSet<NodeId>, AdminError> {
        let lp = ListParams::default().labels(&selector_string(&self.names));
        let pods = self.pods.list(&lp).await.map_err(unavailable)?;
        Ok(pods
            .items
            .iter()
            .filter(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .map(|p| p.name_any())
            .collect())
    }

    async fn maps(&self) -> Result<MapState, AdminError> {
        let Some(cm) = self
            .configmaps
            .get_opt(&self.name())
            .await
            .map_err(unavailable)?
        else {
            return Ok(MapState::default());
        };
        let data = cm.data.unwrap_or_default();
        Ok(MapState {
            version: data
                .get("version")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            current: parse(&data, "current")?,
            pending: parse(&data, "pending")?,
        })
    }

    async fn commit(&self, map: &PartitionMap) -> Result<(), AdminError> {
        let mut state = self.maps().await?;
        match &state.pending {
            Some(p) if p == map => return Ok(()),
            Some(p) => {
                return Err(AdminError::EpochConflict(format!(
                    "epoch {} is already pending",
                    p.epoch
                )))
            }
            None => {}
        }
        state.pending = Some(map.clone());
        state.version += 1;
        self.write(&state).await
    }

    async fn progress(&self, epoch: u64) -> Result<MoveProgress, AdminError> {
        let state = self.maps().await?;
        let pending = state.pending.filter(|p| p.epoch == epoch);
        let pending = pending
            .ok_or_else(|| AdminError::EpochConflict(format!("epoch {epoch} is not pending")))?;
        let synced = pending.members.iter().map(|m| m.id.clone()).collect();
        Ok(MoveProgress {
            pending: 0,
            done: 0,
            synced,
        })
    }

    async fn drained(&self, _node: &str) -> Result<bool, AdminError> {
        // Nodes cannot report a completed handoff yet: never claim one.
        Ok(false)
    }

    async fn finalize(&self, epoch: u64) -> Result<(), AdminError> {
        let mut state = self.maps().await?;
        match &state.pending {
            Some(p) if p.epoch == epoch => {
                state.current = state.pending.take();
                state.version += 1;
                self.write(&state).await
            }
            _ if state.current.as_ref().is_some_and(|c| c.epoch == epoch) => Ok(()),
            _ => Err(AdminError::EpochConflict(format!(
                "epoch {epoch} is not pending"
            ))),
        }
    }

    async fn abort(&self, epoch: u64) -> Result<(), AdminError> {
        let mut state = self.maps().await?;
        if state.pending.as_ref().is_some_and(|p| p.epoch == epoch) {
            state.pending = None;
            state.version += 1;
            self.write(&state).await?;
        }
        Ok(())
    }
}
