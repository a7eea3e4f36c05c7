//! Authorization on every request: who the caller is (node certificate, bearer token,
//! client certificate or nobody) and whether the call is allowed (see
//! [`dynamo_core::access`] for the model). A tower layer on both gRPC ports refuses a call
//! with UNAUTHENTICATED or PERMISSION_DENIED, saying what was missing, before any service
//! sees it; it hands the caller ([`Principal`]) on to the services in the request's
//! extensions, with its [`Credentials`], so that `Kv.Session` can check each get, put and
//! delete it carries against the rules in force at the time.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::task::{Context, Poll};

use dynamo_core::access::{AuthFile, Denied, Policy, Principal, Role};
use dynamo_core::identity::Identity;
use dynamo_proto::tls::Swappable;
use futures::future::BoxFuture;
use tonic::Status;

use crate::listener::ConnInfo;

/// The rules in force.
#[derive(Debug)]
pub struct Access {
    policy: Swappable<Policy>,
    file: Option<PathBuf>,
    /// Whether nodes identify themselves with certificates (TLS on).
    nodes_identified: bool,
}

/// Reads an authorization file.
pub fn read_file(path: &Path) -> Result<Policy, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the authorization file {}: {e}", path.display()))?;
    let file: AuthFile = serde_yaml::from_str(&text)
        .map_err(|e| format!("the authorization file {} is invalid: {e}", path.display()))?;
    Policy::from_file(&file)
        .map_err(|e| format!("the authorization file {} is invalid: {e}", path.display()))
}

impl Access {
    /// The rules of `file` (none: everyone may do everything but node calls).
    pub fn load(file: Option<PathBuf>, nodes_identified: bool) -> Result<Arc<Self>, String> {
        let policy = match &file {
            Some(path) => read_file(path)?,
            None => Policy::open(),
        };
        Ok(Arc::new(Self {
            policy: Swappable::new(policy),
            file,
            nodes_identified,
        }))
    }

    /// No authorization file and no TLS: everything is allowed.
    pub fn open() -> Arc<Self> {
        Arc::new(Self {
            policy: Swappable::new(Policy::open()),
            file: None,
            nodes_identified: false,
        })
    }

    /// The authorization file, if any.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// Reads the file again; on failure the rules in force stay.
    pub fn reload(&self) -> Result<(), String> {
        if let Some(path) = &self.file {
            self.policy.set(read_file(path)?);
        }
        Ok(())
    }

    /// Who is calling `method` over `conn` with `token`, if they may. On the peer port
    /// with TLS (`certificate_required`) a caller without a certificate of the cluster is
    /// refused whatever it calls: TLS lets it in (so that it can be told what it lacks,
    /// which a refused TLS 1.3 handshake cannot), nothing more.
    pub fn check(
        &self,
        conn: Option<&ConnInfo>,
        token: Option<&str>,
        method: &str,
        certificate_required: bool,
    ) -> Result<Principal, Status> {
        let policy = self.policy.get();
        let identity = conn.and_then(|c| c.identity.as_ref());
        if certificate_required && identity.is_none() && conn.is_some_and(|c| c.tls) {
            return Err(Status::unauthenticated(
                "the peer port takes only callers with a certificate of this cluster's CA \
                 naming this cluster: present one (dynamoctl --cert and --key), or call the \
                 client port",
            ));
        }
        let caller = policy.authenticate(identity, token).map_err(status)?;
        policy
            .authorize(&caller, method, self.nodes_identified)
            .map_err(status)?;
        Ok(caller)
    }

    /// Whether the caller with `credentials` (from the request's extensions; none when no
    /// layer ran, as in in-process tests) has `role` for `what` under the rules in force
    /// now: a session opened before the file changed gets the new rules, a revoked token
    /// included.
    pub fn allow(
        &self,
        credentials: Option<&Credentials>,
        role: Role,
        what: &str,
    ) -> Result<(), Status> {
        let Some(credentials) = credentials else {
            return Ok(());
        };
        let policy = self.policy.get();
        let caller = policy
            .authenticate(credentials.identity.as_ref(), credentials.token.as_deref())
            .map_err(status)?;
        policy.allow(&caller, role, what).map_err(status)
    }
}

fn status(denied: Denied) -> Status {
    match denied {
        Denied::Unauthenticated(m) => Status::unauthenticated(m),
        Denied::PermissionDenied(m) => Status::permission_denied(m),
    }
}

/// What a caller showed: kept by a session to check each of its operations.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    pub identity: Option<Identity>,
    pub token: Option<String>,
}

/// The bearer token of a request's `authorization` header, if any.
fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
}

/// The layer that checks every call; `certificate_required` on the peer port.
#[derive(Clone, Debug)]
pub struct AccessLayer {
    pub access: Arc<Access>,
    pub certificate_required: bool,
}

impl<S> tower::Layer<S> for AccessLayer {
    type Service = AccessService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AccessService {
            inner,
            access: self.access.clone(),
            certificate_required: self.certificate_required,
        }
    }
}

#[derive(Clone, Debug)]
pub struct AccessService<S> {
    inner: S,
    access: Arc<Access>,
    certificate_required: bool,
}

impl<S, B> tower::Service<http::Request<B>> for AccessService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let checked = self.access.check(
            req.extensions().get::<ConnInfo>(),
            bearer(req.headers()),
            req.uri().path(),
            self.certificate_required,
        );
        match checked {
            Ok(caller) => {
                let credentials = Credentials {
                    identity: req
                        .extensions()
                        .get::<ConnInfo>()
                        .and_then(|c| c.identity.clone()),
                    token: bearer(req.headers()).map(str::to_owned),
                };
                req.extensions_mut().insert(caller);
                req.extensions_mut().insert(credentials);
                Box::pin(self.inner.call(req))
            }
            Err(status) => {
                tracing::debug!(method = req.uri().path(), %status, "call refused");
                Box::pin(futures::future::ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dynamo_core::access::token_sha256;
    use dynamo_core::identity::{Identity, Kind};

    fn file(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("auth.yaml");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn the_file_is_read_checked_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "anonymous: read\nusers:\n  - name: app\n    role: write\n    token_sha256: {}\n",
            token_sha256("secret")
        );
        let path = file(dir.path(), &text);
        let access = Access::load(Some(path.clone()), true).unwrap();
        assert!(access.check(None, None, "/dynamo.v1.Kv/Get", false).is_ok());
        let err = access
            .check(None, None, "/dynamo.v1.Kv/Put", false)
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        let app = access
            .check(None, Some("secret"), "/dynamo.v1.Kv/Put", false)
            .unwrap();
        assert_eq!(app.name, "app");
        let err = access
            .check(None, Some("secret"), "/dynamo.v1.Replica/Write", false)
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        let node = ConnInfo {
            identity: Some(Identity::new("c", Kind::Node, "n1")),
            ..ConnInfo::default()
        };
        assert!(access
            .check(Some(&node), None, "/dynamo.v1.Replica/Write", false)
            .is_ok());

        // A broken file keeps the old rules; a good one replaces them.
        std::fs::write(&path, "users: [oops").unwrap();
        assert!(access.reload().unwrap_err().contains("invalid"));
        assert!(access.check(None, None, "/dynamo.v1.Kv/Get", false).is_ok());
        std::fs::write(&path, "anonymous: none\n").unwrap();
        access.reload().unwrap();
        assert!(access
            .check(None, None, "/dynamo.v1.Kv/Get", false)
            .is_err());

        // On the peer port with TLS, a caller without a certificate gets nothing, not even
        // what anonymous callers may do elsewhere.
        let tls_anonymous = ConnInfo {
            tls: true,
            ..ConnInfo::default()
        };
        std::fs::write(&path, "anonymous: admin\n").unwrap();
        access.reload().unwrap();
        assert!(access
            .check(Some(&tls_anonymous), None, "/dynamo.v1.Kv/Get", false)
            .is_ok());
        let err = access
            .check(Some(&tls_anonymous), None, "/dynamo.v1.Kv/Get", true)
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        assert!(err.message().contains("certificate"), "{err:?}");
        assert!(access
            .check(Some(&node), None, "/dynamo.v1.Kv/Get", true)
            .is_ok());

        let err = Access::load(Some(dir.path().join("missing.yaml")), true).unwrap_err();
        assert!(err.contains("missing.yaml"), "{err}");
    }

    #[test]
    fn bearer_tokens_are_read_from_the_authorization_header() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        headers.insert(http::header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&headers), Some("abc"));
        headers.insert(http::header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&headers), None);
    }
}
