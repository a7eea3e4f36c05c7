//! The operator's own HTTP endpoints: `/healthz` (liveness), `/readyz` and `/metrics`
//! (Prometheus).
//!
//! `/readyz` is ready once the process is up (its API client made, the endpoints served),
//! whether it leads or stands by; its body says which. Readiness must not wait for the
//! Lease: a Deployment counts only ready pods as available, so a standby that is never
//! ready keeps a two-replica Deployment unavailable (`helm install --wait` and
//! `kubectl rollout status` never finish), and a rolling update (one surge pod, none
//! unavailable) wedges: the new pod waits for the Lease the old pod holds, and the old pod
//! is removed only once the new one is ready. Found against a real API server.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;

use crate::metrics::Metrics;

/// What the endpoints report.
#[derive(Clone)]
pub struct Health {
    /// The process is up.
    pub ready: Arc<AtomicBool>,
    /// This replica holds the Lease (or runs without leader election).
    pub leading: Arc<AtomicBool>,
    pub metrics: Arc<Metrics>,
}

/// The router of the health and metrics endpoints.
pub fn router(health: Health) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(h): State<Health>| async move {
                match (
                    h.ready.load(Ordering::Relaxed),
                    h.leading.load(Ordering::Relaxed),
                ) {
                    (false, _) => (StatusCode::SERVICE_UNAVAILABLE, "starting"),
                    (true, true) => (StatusCode::OK, "ready: leading"),
                    (true, false) => (StatusCode::OK, "ready: standing by for the lease"),
                }
            }),
        )
        .route(
            "/metrics",
            get(|State(h): State<Health>| async move { h.metrics.render() }),
        )
        .with_state(health)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use http::Request;
    use tower::ServiceExt;

    async fn get(app: Router, path: &str) -> (StatusCode, String) {
        let resp = app
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn ready_once_up_whether_leading_or_standing_by() {
        let health = Health {
            ready: Arc::default(),
            leading: Arc::default(),
            metrics: Arc::new(Metrics::default()),
        };
        assert_eq!(
            get(router(health.clone()), "/healthz").await.0,
            StatusCode::OK
        );
        assert_eq!(
            get(router(health.clone()), "/readyz").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        health.ready.store(true, Ordering::Relaxed);
        let (code, text) = get(router(health.clone()), "/readyz").await;
        assert_eq!(code, StatusCode::OK);
        assert!(text.contains("standing by"), "{text}");
        health.leading.store(true, Ordering::Relaxed);
        let (code, text) = get(router(health.clone()), "/readyz").await;
        assert_eq!(code, StatusCode::OK);
        assert!(text.contains("leading"), "{text}");
        let (code, text) = get(router(health), "/metrics").await;
        assert_eq!(code, StatusCode::OK);
        assert!(text.contains("dynamo_operator_reconciles_total"), "{text}");
    }
}
