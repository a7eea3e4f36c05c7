//! Who a TLS certificate names: `dynamo://<cluster>/<kind>/<name>`, carried as a URI
//! subject alternative name.
//!
//! A node accepts a peer on its peer port only with a certificate from the cluster's CA
//! that names this cluster and kind `node` (another node) or `admin` (the operator,
//! `dynamoctl change`); a client certificate (`client`) names the user the authorization
//! file gives a role to. Naming the cluster in the certificate keeps two clusters whose
//! certificates come from one CA (one cert-manager issuer, say) from joining each other.

use std::fmt;

/// The URI scheme of identities.
pub const SCHEME: &str = "dynamo://";

/// What a certificate's holder is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A storage node of the cluster: may call everything.
    Node,
    /// An operator or administrator: may change the cluster (commit maps, repair) and
    /// call the client API, but not replicate.
    Admin,
    /// A client: its role comes from the authorization file.
    Client,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Node => "node",
            Kind::Admin => "admin",
            Kind::Client => "client",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "node" => Some(Kind::Node),
            "admin" => Some(Kind::Admin),
            "client" => Some(Kind::Client),
            _ => None,
        }
    }
}

/// The identity a certificate names.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    pub cluster: String,
    pub kind: Kind,
    pub name: String,
}

/// Why a URI is not an identity.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("{0:?} is not a dynamo:// identity")]
    Scheme(String),
    #[error("{0:?} is not dynamo://<cluster>/<node|admin|client>/<name>")]
    Shape(String),
}

impl Identity {
    pub fn new(cluster: impl Into<String>, kind: Kind, name: impl Into<String>) -> Self {
        Self {
            cluster: cluster.into(),
            kind,
            name: name.into(),
        }
    }

    /// The URI to put in a certificate's subject alternative names.
    pub fn uri(&self) -> String {
        self.to_string()
    }

    /// Parses `dynamo://<cluster>/<kind>/<name>`. Names are non-empty and hold no `/`;
    /// a cluster may (the operator names clusters `<namespace>/<name>`), but has no empty
    /// segment: the last two segments are always the kind and the name.
    pub fn parse(uri: &str) -> Result<Self, IdentityError> {
        let rest = uri
            .strip_prefix(SCHEME)
            .ok_or_else(|| IdentityError::Scheme(uri.to_owned()))?;
        let shape = || IdentityError::Shape(uri.to_owned());
        let mut parts = rest.rsplitn(3, '/');
        let (Some(name), Some(kind), Some(cluster)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(shape());
        };
        if name.is_empty() || cluster.split('/').any(str::is_empty) {
            return Err(shape());
        }
        let kind = Kind::parse(kind).ok_or_else(shape)?;
        Ok(Self::new(cluster, kind, name))
    }

    /// The one identity among a certificate's URI names, ignoring URIs of other schemes.
    /// Several dynamo identities in one certificate are refused: which would count?
    pub fn from_uris<'a>(
        uris: impl IntoIterator<Item = &'a str>,
    ) -> Result<Option<Self>, IdentityError> {
        let mut found = None;
        for uri in uris.into_iter().filter(|u| u.starts_with(SCHEME)) {
            let identity = Self::parse(uri)?;
            if found.is_some() {
                return Err(IdentityError::Shape(format!(
                    "{uri} (a certificate may name one identity)"
                )));
            }
            found = Some(identity);
        }
        Ok(found)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCHEME}{}/{}/{}",
            self.cluster,
            self.kind.as_str(),
            self.name
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identity_survives_its_uri() {
        for kind in [Kind::Node, Kind::Admin, Kind::Client] {
            let id = Identity::new("prod", kind, "dynamo-0");
            assert_eq!(Identity::parse(&id.uri()).unwrap(), id);
        }
        assert_eq!(
            Identity::new("prod", Kind::Node, "n1").uri(),
            "dynamo://prod/node/n1"
        );
    }

    #[test]
    fn a_cluster_may_be_namespaced() {
        let id = Identity::new("prod/kv", Kind::Node, "kv-0");
        assert_eq!(id.uri(), "dynamo://prod/kv/node/kv-0");
        assert_eq!(Identity::parse(&id.uri()).unwrap(), id);
    }

    #[test]
    fn malformed_identities_are_refused_and_named() {
        for bad in [
            "dynamo://prod/node",
            "dynamo://prod/node/",
            "dynamo:///node/n1",
            "dynamo://prod/root/n1",
            "dynamo://prod/node/n1/extra",
            "dynamo://ns//node/n1",
            "dynamo://ns/kv/node",
        ] {
            let err = Identity::parse(bad).unwrap_err();
            assert_eq!(err, IdentityError::Shape(bad.to_owned()));
            assert!(err.to_string().contains(bad));
        }
        assert!(matches!(
            Identity::parse("spiffe://prod/node/n1"),
            Err(IdentityError::Scheme(_))
        ));
    }

    #[test]
    fn a_certificate_names_at_most_one_identity() {
        let uris = ["spiffe://x/y", "dynamo://prod/client/alice"];
        assert_eq!(
            Identity::from_uris(uris).unwrap(),
            Some(Identity::new("prod", Kind::Client, "alice"))
        );
        assert_eq!(Identity::from_uris(["https://example.com"]).unwrap(), None);
        assert!(Identity::from_uris(["dynamo://a/node/x", "dynamo://b/node/x"]).is_err());
    }
}
