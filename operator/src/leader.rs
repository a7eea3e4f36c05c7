//! Leader election with a `coordination.k8s.io/v1` Lease, so that two operator replicas
//! are safe: only the holder reconciles. The holder renews every `duration / 3`; another
//! replica takes over only after `duration` without a renewal. Writes replace the Lease
//! at the resourceVersion read, so two candidates cannot both win. A holder that fails to
//! renew within `duration` stops (the process exits and restarts as a candidate).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};

/// The next Lease spec if `me` may hold the lease at `now`, or None if another holder's
/// lease is still valid. Pure, so the takeover rules are unit-tested.
pub fn next_spec(
    spec: &LeaseSpec,
    me: &str,
    now: Timestamp,
    duration: Duration,
) -> Option<LeaseSpec> {
    let holder = spec.holder_identity.as_deref();
    let expired = match &spec.renew_time {
        Some(MicroTime(t)) => *t + SignedDuration::try_from(duration).ok()? < now,
        None => true,
    };
    if holder.is_some() && holder != Some(me) && !expired {
        return None;
    }
    let takeover = holder != Some(me);
    Some(LeaseSpec {
        holder_identity: Some(me.to_string()),
        lease_duration_seconds: Some(duration.as_secs() as i32),
        acquire_time: if takeover {
            Some(MicroTime(now))
        } else {
            spec.acquire_time.clone()
        },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(
            spec.lease_transitions.unwrap_or(0) + i32::from(takeover && holder.is_some()),
        ),
        ..LeaseSpec::default()
    })
}

/// A Lease-based lock.
pub struct LeaseLock {
    pub api: Api<Lease>,
    pub name: String,
    pub identity: String,
    pub duration: Duration,
}

impl LeaseLock {
    /// Tries once to acquire or renew; true when this replica holds the lease.
    pub async fn try_acquire(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let existing = self.api.get_opt(&self.name).await?;
        let (meta, spec) = match existing {
            Some(l) => (l.metadata, l.spec.unwrap_or_default()),
            None => (
                ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                LeaseSpec::default(),
            ),
        };
        let Some(spec) = next_spec(&spec, &self.identity, now, self.duration) else {
            return Ok(false);
        };
        let create = meta.resource_version.is_none();
        let lease = Lease {
            metadata: meta,
            spec: Some(spec),
        };
        let result = if create {
            self.api.create(&PostParams::default(), &lease).await
        } else {
            self.api
                .replace(&self.name, &PostParams::default(), &lease)
                .await
        };
        match result {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Waits until this replica holds the lease.
    pub async fn acquire(&self) {
        loop {
            match self.try_acquire().await {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => tracing::warn!("leader election: {e}"),
            }
            tokio::time::sleep(self.duration / 5).await;
        }
    }

    /// Renews until a renewal has not succeeded for `duration`; then returns (leadership lost).
    pub async fn keep(&self) {
        let mut last = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.duration / 3).await;
            match self.try_acquire().await {
                Ok(true) => last = tokio::time::Instant::now(),
                Ok(false) => return,
                Err(e) => tracing::warn!("leader election renew: {e}"),
            }
            if last.elapsed() >= self.duration {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Duration = Duration::from_secs(15);

    fn held_by(who: &str, at: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(who.into()),
            renew_time: Some(MicroTime(Timestamp::from_second(at).unwrap())),
            acquire_time: Some(MicroTime(Timestamp::from_second(at).unwrap())),
            lease_transitions: Some(0),
            ..Default::default()
        }
    }

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    #[test]
    fn a_valid_lease_of_another_holder_is_respected() {
        assert_eq!(next_spec(&held_by("a", 100), "b", t(110), D), None);
    }

    #[test]
    fn an_expired_lease_is_taken_over_and_counted() {
        let next = next_spec(&held_by("a", 100), "b", t(116), D).unwrap();
        assert_eq!(next.holder_identity.as_deref(), Some("b"));
        assert_eq!(next.lease_transitions, Some(1));
        assert_eq!(next.acquire_time, Some(MicroTime(t(116))));
    }

    #[test]
    fn the_holder_renews_and_a_free_lease_is_taken() {
        let renewed = next_spec(&held_by("a", 100), "a", t(105), D).unwrap();
        assert_eq!(
            (renewed.renew_time, renewed.acquire_time),
            (Some(MicroTime(t(105))), Some(MicroTime(t(100))))
        );
        let fresh = next_spec(&LeaseSpec::default(), "a", t(1), D).unwrap();
        assert_eq!(
            (fresh.holder_identity.as_deref(), fresh.lease_transitions),
            (Some("a"), Some(0))
        );
    }
}

#[cfg(test)]
mod lease_tests {
    use super::*;
    use crate::fake_api::FakeApi;

    fn lock(api: &FakeApi, who: &str) -> LeaseLock {
        LeaseLock {
            api: Api::namespaced(api.client(), "ops"),
            name: "leader".into(),
            identity: who.into(),
            duration: Duration::from_secs(15),
        }
    }

    #[tokio::test]
    async fn only_one_of_two_replicas_holds_the_lease() {
        let api = FakeApi::new();
        let (a, b) = (lock(&api, "a"), lock(&api, "b"));
        assert!(
            a.try_acquire().await.unwrap(),
            "the first candidate creates the lease"
        );
        assert!(
            !b.try_acquire().await.unwrap(),
            "a valid lease is respected"
        );
        assert!(a.try_acquire().await.unwrap(), "the holder renews");
        let lease = api.get("leases", "ops", "leader").unwrap();
        assert_eq!(lease["spec"]["holderIdentity"], "a");
    }

    #[tokio::test]
    async fn a_stale_read_loses_the_race_with_a_conflict() {
        let api = FakeApi::new();
        let a = lock(&api, "a");
        assert!(a.try_acquire().await.unwrap());
        // Expire the lease, then let b write at a stale resourceVersion: the API refuses.
        api.with_store(|s| {
            let key = (
                "leases".to_string(),
                "ops".to_string(),
                "leader".to_string(),
            );
            let mut l = s.objects.get(&key).cloned().unwrap();
            l["spec"]["renewTime"] = serde_json::json!("2020-01-01T00:00:00.000000Z");
            s.objects.insert(key, l);
        });
        let mut stale: Lease =
            serde_json::from_value(api.get("leases", "ops", "leader").unwrap()).unwrap();
        assert!(
            lock(&api, "b").try_acquire().await.unwrap(),
            "an expired lease is taken over"
        );
        stale.spec.as_mut().unwrap().holder_identity = Some("c".into());
        let err = lock(&api, "c")
            .api
            .replace("leader", &PostParams::default(), &stale)
            .await
            .unwrap_err();
        assert!(matches!(err, kube::Error::Api(ref s) if s.code == 409));
        assert_eq!(
            api.get("leases", "ops", "leader").unwrap()["spec"]["holderIdentity"],
            "b"
        );
    }
}
