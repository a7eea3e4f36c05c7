//! Who may call what: the authorization model, checked on every request.
//!
//! A caller is identified by, in this order: a certificate naming a node or an admin of
//! the cluster (see [`crate::identity`]); else a bearer token (`authorization: Bearer …`
//! metadata), looked up by its SHA-256 among the users of the authorization file; else a
//! client certificate naming a user of that file; else nobody (anonymous).
//!
//! Users have one role. `read` may get keys and read the cluster's state; `write` also
//! puts and deletes; `admin` also changes the cluster (commits maps, repairs). Calls that
//! replicate (`Replica`, `Gossip`, `AntiEntropy`) are for the cluster's nodes alone: with
//! TLS on, only a node certificate of the cluster may make them. `Health` is open.
//!
//! With no authorization file every caller may do everything (a development setting the
//! node warns about); with one, anonymous callers have its `anonymous` role (`none`
//! unless set).

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::identity::{Identity, Kind};

/// What a user may do; each role includes the ones before it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    #[default]
    None,
    Read,
    Write,
    Admin,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::None => "none",
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        })
    }
}

/// What a call needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Anyone (health checks).
    Nothing,
    /// At least this role.
    Role(Role),
    /// A node of the cluster.
    Node,
}

/// What the gRPC method at `path` (`/dynamo.v1.Kv/Get`) needs. A method this table does
/// not know needs a node: new calls are closed until they are classified.
pub fn need(path: &str) -> Need {
    let Some((service, method)) = path.trim_start_matches('/').split_once('/') else {
        return Need::Node;
    };
    match (service, method) {
        ("grpc.health.v1.Health", _) => Need::Nothing,
        // A session's gets need `read`, its puts and deletes `write`: checked per op.
        ("dynamo.v1.Kv", "Get" | "Session") => Need::Role(Role::Read),
        ("dynamo.v1.Kv", "Put" | "Delete") => Need::Role(Role::Write),
        (
            "dynamo.v1.Admin",
            "NodeInfo" | "PartitionMap" | "ClusterHealth" | "Hints" | "AntiEntropyState" | "Maps"
            | "Plan" | "Progress" | "Moves" | "Drained",
        ) => Need::Role(Role::Read),
        ("dynamo.v1.Admin", "Repair" | "Commit" | "Finalize" | "Abort") => Need::Role(Role::Admin),
        _ => Need::Node,
    }
}

/// A user of the authorization file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// The user's name: what a client certificate names (`dynamo://<cluster>/client/<name>`).
    pub name: String,
    pub role: Role,
    /// SHA-256 (hex) of the user's bearer token, if the user may use one. The file holds
    /// no token itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_sha256: Option<String>,
}

/// The authorization file (YAML).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthFile {
    /// The role of callers with no credentials.
    #[serde(default)]
    pub anonymous: Role,
    #[serde(default)]
    pub users: Vec<User>,
}

/// Why an authorization file is invalid.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("user {0:?} is listed twice")]
    DuplicateUser(String),
    #[error("user {user:?}: token_sha256 must be 64 hex digits (the SHA-256 of the token)")]
    BadTokenHash { user: String },
    #[error("users {0:?} and {1:?} have the same token")]
    SharedToken(String, String),
    #[error("a user needs a name")]
    NoName,
}

/// How a caller was identified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Via {
    /// A certificate naming a node of the cluster.
    NodeCertificate,
    /// A certificate naming an admin of the cluster.
    AdminCertificate,
    Token,
    ClientCertificate,
    Anonymous,
}

/// A caller, identified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub via: Via,
    pub role: Role,
}

impl Principal {
    pub fn is_node(&self) -> bool {
        self.via == Via::NodeCertificate
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.via {
            Via::NodeCertificate => write!(f, "node {} (certificate)", self.name),
            Via::AdminCertificate => write!(f, "admin {} (certificate)", self.name),
            Via::Token => write!(f, "user {} (bearer token)", self.name),
            Via::ClientCertificate => write!(f, "user {} (client certificate)", self.name),
            Via::Anonymous => f.write_str("an anonymous caller"),
        }
    }
}

/// A refusal, with what was missing: maps to gRPC UNAUTHENTICATED and PERMISSION_DENIED.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
}

/// The loaded authorization rules.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Whether a file was given: without one, everyone may do everything.
    enforced: bool,
    anonymous: Role,
    roles: HashMap<String, Role>,
    /// SHA-256 of a token → user name.
    tokens: HashMap<[u8; 32], String>,
}

impl Policy {
    /// No authorization file: every caller may call everything that is not for nodes.
    pub fn open() -> Self {
        Self {
            enforced: false,
            anonymous: Role::Admin,
            roles: HashMap::new(),
            tokens: HashMap::new(),
        }
    }

    /// The rules of an authorization file.
    pub fn from_file(file: &AuthFile) -> Result<Self, PolicyError> {
        let mut roles = HashMap::new();
        let mut tokens: HashMap<[u8; 32], String> = HashMap::new();
        for user in &file.users {
            if user.name.is_empty() {
                return Err(PolicyError::NoName);
            }
            if roles.insert(user.name.clone(), user.role).is_some() {
                return Err(PolicyError::DuplicateUser(user.name.clone()));
            }
            if let Some(hex) = &user.token_sha256 {
                let hash = decode_sha256(hex).ok_or_else(|| PolicyError::BadTokenHash {
                    user: user.name.clone(),
                })?;
                if let Some(other) = tokens.insert(hash, user.name.clone()) {
                    return Err(PolicyError::SharedToken(other, user.name.clone()));
                }
            }
        }
        Ok(Self {
            enforced: true,
            anonymous: file.anonymous,
            roles,
            tokens,
        })
    }

    /// Whether an authorization file is in force.
    pub fn enforced(&self) -> bool {
        self.enforced
    }

    /// Who the caller is: from `certificate` (verified by TLS, of this cluster) and
    /// `token` (a bearer token). A token matching no user is refused, not taken as
    /// anonymous: a typo must not silently lose rights.
    pub fn authenticate(
        &self,
        certificate: Option<&Identity>,
        token: Option<&str>,
    ) -> Result<Principal, Denied> {
        match certificate {
            Some(id) if id.kind == Kind::Node => {
                return Ok(Principal {
                    name: id.name.clone(),
                    via: Via::NodeCertificate,
                    role: Role::Admin,
                })
            }
            Some(id) if id.kind == Kind::Admin => {
                return Ok(Principal {
                    name: id.name.clone(),
                    via: Via::AdminCertificate,
                    role: Role::Admin,
                })
            }
            _ => {}
        }
        if let Some(token) = token {
            let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
            return match self.tokens.get(&hash) {
                Some(name) => Ok(Principal {
                    name: name.clone(),
                    via: Via::Token,
                    role: self.role_of(name),
                }),
                None if !self.enforced => Ok(self.anonymous()),
                None => Err(Denied::Unauthenticated(
                    "the bearer token matches no user of the node's authorization file".into(),
                )),
            };
        }
        if let Some(id) = certificate {
            return Ok(Principal {
                name: id.name.clone(),
                via: Via::ClientCertificate,
                role: match self.enforced {
                    true => self.role_of(&id.name),
                    false => Role::Admin,
                },
            });
        }
        Ok(self.anonymous())
    }

    fn anonymous(&self) -> Principal {
        Principal {
            name: String::new(),
            via: Via::Anonymous,
            role: self.anonymous,
        }
    }

    fn role_of(&self, name: &str) -> Role {
        self.roles.get(name).copied().unwrap_or_default()
    }

    /// Whether `caller` may call `method` (its gRPC path). `nodes_identified`: whether
    /// nodes present certificates (TLS on); without, node calls cannot be told apart and
    /// are let through.
    pub fn authorize(
        &self,
        caller: &Principal,
        method: &str,
        nodes_identified: bool,
    ) -> Result<(), Denied> {
        match need(method) {
            Need::Nothing => Ok(()),
            Need::Node if caller.is_node() || !nodes_identified => Ok(()),
            Need::Node => Err(Denied::PermissionDenied(format!(
                "{method} is for the cluster's nodes and needs a node certificate of this \
                 cluster; the caller is {caller}"
            ))),
            Need::Role(role) => self.allow(caller, role, method),
        }
    }

    /// Whether `caller` has `role`, for `what` (a method, or an operation of a session).
    pub fn allow(&self, caller: &Principal, role: Role, what: &str) -> Result<(), Denied> {
        if caller.role >= role {
            return Ok(());
        }
        Err(match caller.via {
            Via::Anonymous => Denied::Unauthenticated(format!(
                "{what} needs the {role} role and the call carried no credentials: send a \
                 bearer token (authorization: Bearer …) or a client certificate"
            )),
            _ => Denied::PermissionDenied(format!(
                "{what} needs the {role} role; {caller} has the role {}",
                caller.role
            )),
        })
    }
}

/// The SHA-256 of `token`, hex, for an authorization file.
pub fn token_sha256(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn decode_sha256(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy::from_file(&AuthFile {
            anonymous: Role::None,
            users: vec![
                User {
                    name: "reader".into(),
                    role: Role::Read,
                    token_sha256: Some(token_sha256("r-token")),
                },
                User {
                    name: "app".into(),
                    role: Role::Write,
                    token_sha256: Some(token_sha256("w-token")),
                },
                User {
                    name: "ops".into(),
                    role: Role::Admin,
                    token_sha256: None,
                },
            ],
        })
        .unwrap()
    }

    fn client(name: &str) -> Identity {
        Identity::new("prod", Kind::Client, name)
    }

    #[test]
    fn methods_are_classified_and_unknown_ones_are_for_nodes() {
        assert_eq!(need("/dynamo.v1.Kv/Get"), Need::Role(Role::Read));
        assert_eq!(need("/dynamo.v1.Kv/Put"), Need::Role(Role::Write));
        assert_eq!(need("/dynamo.v1.Admin/Commit"), Need::Role(Role::Admin));
        assert_eq!(
            need("/dynamo.v1.Admin/PartitionMap"),
            Need::Role(Role::Read)
        );
        assert_eq!(need("/dynamo.v1.Replica/Write"), Need::Node);
        assert_eq!(need("/dynamo.v1.Gossip/Exchange"), Need::Node);
        assert_eq!(need("/dynamo.v1.Admin/SomethingNew"), Need::Node);
        assert_eq!(need("/grpc.health.v1.Health/Check"), Need::Nothing);
        assert_eq!(need("garbage"), Need::Node);
    }

    #[test]
    fn each_role_does_what_it_says_and_no_more() {
        let p = policy();
        let reader = p.authenticate(None, Some("r-token")).unwrap();
        let app = p.authenticate(None, Some("w-token")).unwrap();
        let ops = p.authenticate(Some(&client("ops")), None).unwrap();
        assert_eq!(
            (reader.role, app.role, ops.role),
            (Role::Read, Role::Write, Role::Admin)
        );
        assert!(p.authorize(&reader, "/dynamo.v1.Kv/Get", true).is_ok());
        let err = p.authorize(&reader, "/dynamo.v1.Kv/Put", true).unwrap_err();
        assert!(
            matches!(&err, Denied::PermissionDenied(m) if m.contains("write role") && m.contains("user reader")),
            "{err:?}"
        );
        assert!(p.authorize(&app, "/dynamo.v1.Kv/Delete", true).is_ok());
        assert!(p.authorize(&app, "/dynamo.v1.Admin/Commit", true).is_err());
        assert!(p.authorize(&ops, "/dynamo.v1.Admin/Commit", true).is_ok());
        // Nobody but a node replicates, whatever their role.
        let err = p
            .authorize(&ops, "/dynamo.v1.Replica/Write", true)
            .unwrap_err();
        assert!(matches!(&err, Denied::PermissionDenied(m) if m.contains("node certificate")));
        let node = p
            .authenticate(Some(&Identity::new("prod", Kind::Node, "n1")), None)
            .unwrap();
        assert!(p.authorize(&node, "/dynamo.v1.Replica/Write", true).is_ok());
    }

    #[test]
    fn missing_and_wrong_credentials_say_so() {
        let p = policy();
        let anonymous = p.authenticate(None, None).unwrap();
        let err = p
            .authorize(&anonymous, "/dynamo.v1.Kv/Get", true)
            .unwrap_err();
        assert!(matches!(&err, Denied::Unauthenticated(m) if m.contains("no credentials")));
        let err = p.authenticate(None, Some("typo")).unwrap_err();
        assert!(matches!(&err, Denied::Unauthenticated(m) if m.contains("matches no user")));
        // A certificate naming someone the file does not list gets no role.
        let stranger = p.authenticate(Some(&client("mallory")), None).unwrap();
        let err = p
            .authorize(&stranger, "/dynamo.v1.Kv/Get", true)
            .unwrap_err();
        assert!(matches!(&err, Denied::PermissionDenied(m) if m.contains("mallory")));
    }

    #[test]
    fn without_a_file_everything_but_node_calls_is_open() {
        let p = Policy::open();
        let anonymous = p.authenticate(None, Some("anything")).unwrap();
        assert!(p
            .authorize(&anonymous, "/dynamo.v1.Admin/Commit", true)
            .is_ok());
        assert!(p
            .authorize(&anonymous, "/dynamo.v1.Replica/Write", true)
            .is_err());
        // Without TLS nodes are not identified: their calls cannot be refused.
        assert!(p
            .authorize(&anonymous, "/dynamo.v1.Replica/Write", false)
            .is_ok());
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        let user = |name: &str, hash: Option<String>| User {
            name: name.into(),
            role: Role::Read,
            token_sha256: hash,
        };
        let file = |users| AuthFile {
            anonymous: Role::None,
            users,
        };
        assert_eq!(
            Policy::from_file(&file(vec![user("a", None), user("a", None)])).unwrap_err(),
            PolicyError::DuplicateUser("a".into())
        );
        assert_eq!(
            Policy::from_file(&file(vec![user("a", Some("abc".into()))])).unwrap_err(),
            PolicyError::BadTokenHash { user: "a".into() }
        );
        let same = token_sha256("t");
        assert!(matches!(
            Policy::from_file(&file(vec![
                user("a", Some(same.clone())),
                user("b", Some(same))
            ])),
            Err(PolicyError::SharedToken(..))
        ));
        // Unknown fields are refused (a misspelt `token_sha256` must not leave a user
        // without the token it was meant to have).
        let unknown = r#"{"anonymous":"read","users":[{"name":"app","role":"write","token":"x"}]}"#;
        assert!(serde_json::from_str::<AuthFile>(unknown).is_err());
        let good = r#"{"anonymous":"read","users":[{"name":"app","role":"write"}]}"#;
        assert_eq!(
            serde_json::from_str::<AuthFile>(good).unwrap().anonymous,
            Role::Read
        );
    }
}
