//! Connections to one node: a few long-lived HTTP/2 channels, a `Kv.Session` on each, and
//! a health mark.
//!
//! Each channel is one TCP connection (TCP_NODELAY on, so small requests never wait out a
//! delayed ACK; writes corked, so a request's HEADERS and DATA leave in one segment; see
//! `dynamo_proto::cork`) over which tonic multiplexes every concurrent request. Gets, puts
//! and deletes go through the channel's session (see [`crate::session`]), reopened when it
//! closes; admin calls are unary. One channel is enough for most callers. Channels are
//! lazy and reconnect on their own; a node whose connection failed is marked down for a
//! short while so that callers try the others first.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dynamo_proto::cork;
use dynamo_proto::tls::ClientTls;
use dynamo_proto::v1::{session_request, session_response, GetRequest};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};

use crate::error::{Error, Result};
use crate::session::Session;

/// Largest response the client accepts: several siblings of the largest allowed value.
pub(crate) const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Settings of the channels to one node.
#[derive(Clone, Debug)]
pub(crate) struct ChannelSettings {
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub channels_per_node: usize,
    pub down_for: Duration,
    pub tls: Option<ClientTls>,
    pub token: Option<Token>,
}

/// A bearer token, sent in the `authorization` header of every request. Its `Debug`
/// never shows it.
#[derive(Clone)]
pub struct Token(MetadataValue<Ascii>);

impl Token {
    /// A token as the node's authorization file knows it (by its SHA-256).
    pub fn new(token: &str) -> Result<Self> {
        let value = format!("Bearer {}", token.trim());
        value
            .parse()
            .map(Self)
            .map_err(|_| Error::InvalidToken("it holds characters a header cannot carry".into()))
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Adds the bearer token, if any, to every request.
#[derive(Clone, Debug)]
pub(crate) struct Bearer(Option<Token>);

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut req: tonic::Request<()>,
    ) -> std::result::Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            req.metadata_mut().insert("authorization", token.0.clone());
        }
        Ok(req)
    }
}

/// A channel to a node, its requests carrying the client's credentials.
pub(crate) type Chan = InterceptedService<Channel, Bearer>;

/// The channels to one node.
#[derive(Debug)]
pub(crate) struct NodeConn {
    addr: String,
    channels: Vec<Chan>,
    /// The session on each channel, opened on first use and reopened once closed.
    sessions: Vec<Session>,
    request_timeout: Duration,
    next: AtomicUsize,
    /// Milliseconds since `epoch` until which the node counts as down; 0 = up.
    down_until_ms: AtomicU64,
    epoch: Instant,
    down_for: Duration,
}

impl NodeConn {
    /// Opens (lazily) the channels to `addr` (`host:port` or a full `http://` URI).
    /// Must be called inside a tokio runtime.
    pub fn open(addr: &str, settings: &ChannelSettings) -> Result<Self> {
        let endpoint = endpoint(addr, settings)?;
        let channels: Vec<Chan> = (0..settings.channels_per_node.max(1))
            .map(|_| {
                let channel =
                    endpoint.connect_with_connector_lazy(cork::connector(settings.tls.clone()));
                InterceptedService::new(channel, Bearer(settings.token.clone()))
            })
            .collect();
        Ok(Self {
            addr: addr.to_string(),
            sessions: channels
                .iter()
                .map(|ch| Session::new(ch.clone(), MAX_MESSAGE_BYTES))
                .collect(),
            channels,
            request_timeout: settings.request_timeout,
            next: AtomicUsize::new(0),
            down_until_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            down_for: settings.down_for,
        })
    }

    /// The address this node was opened with.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The next channel, round-robin.
    pub fn channel(&self) -> Chan {
        self.channels[self.turn()].clone()
    }

    fn turn(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % self.channels.len()
    }

    /// Sends a get, put or delete through the next channel's session and waits for its
    /// answer, at most the request timeout.
    pub async fn kv(&self, op: session_request::Op) -> Result<session_response::Result> {
        self.sessions[self.turn()]
            .call(op, self.request_timeout)
            .await
    }

    /// Opens every channel and its session with one get of `key`, so that a caller who
    /// times its requests does not count the connection and session set-up of its first
    /// ones. Returns how many sessions answered (an error from the node counts: the
    /// session is open); a failure to connect leaves the channel to reconnect later.
    pub async fn warm_up(&self, key: &[u8]) -> usize {
        let calls = self.sessions.iter().map(|session| {
            let op = session_request::Op::Get(GetRequest {
                key: key.to_vec(),
                r: None,
            });
            session.call(op, self.request_timeout)
        });
        futures::future::join_all(calls)
            .await
            .iter()
            .filter(|answer| match answer {
                Ok(_) => true,
                Err(e) => !e.is_transport_failure(),
            })
            .count()
    }

    /// Whether a recent failure marks this node as down.
    #[cfg(test)]
    pub fn is_down(&self) -> bool {
        let until = self.down_until_ms.load(Ordering::Relaxed);
        until != 0 && self.now_ms() < until
    }

    /// Whether a request may try this node now: it is up, or its down period is over and
    /// this request takes the node's trial. While a trial runs, the node stays down for
    /// everyone else, for the trial's request timeout and another period, until a success
    /// marks it up or a failure down again: a node that does not answer holds one request
    /// at a time, not all of them. Ask only right before trying the node, so that a trial
    /// taken is a trial made.
    pub fn usable(&self) -> bool {
        let until = self.down_until_ms.load(Ordering::Relaxed);
        if until == 0 {
            return true;
        }
        let now = self.now_ms();
        if now < until {
            return false;
        }
        let trial_until = now + (self.request_timeout + self.down_for).as_millis() as u64;
        self.down_until_ms
            .compare_exchange(until, trial_until, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    /// Marks the node down for a short while after a failure.
    pub fn mark_down(&self) {
        let until = self.now_ms() + self.down_for.as_millis() as u64;
        self.down_until_ms.store(until.max(1), Ordering::Relaxed);
    }

    /// Marks the node up after a successful call.
    pub fn mark_up(&self) {
        // Load first so that the common (already up) case does not write the cache line.
        if self.down_until_ms.load(Ordering::Relaxed) != 0 {
            self.down_until_ms.store(0, Ordering::Relaxed);
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

/// The tonic endpoint for `addr`, with the client's timeouts (the connector sets
/// TCP_NODELAY).
fn endpoint(addr: &str, settings: &ChannelSettings) -> Result<Endpoint> {
    let uri = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    let endpoint = Endpoint::from_shared(uri).map_err(|e| Error::InvalidAddress {
        addr: addr.to_string(),
        reason: e.to_string(),
    })?;
    Ok(endpoint
        .tcp_nodelay(true)
        // A session's responses share one stream: room for many in flight.
        .initial_stream_window_size(8 << 20)
        .initial_connection_window_size(16 << 20)
        .connect_timeout(settings.connect_timeout)
        .timeout(settings.request_timeout)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true))
}

/// Splits addresses given as repeated and/or comma-separated values, dropping empty
/// entries and duplicates while keeping the order.
pub fn split_addrs<S: AsRef<str>>(values: &[S]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for value in values {
        for addr in value
            .as_ref()
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
        {
            if !out.iter().any(|a| a == addr) {
                out.push(addr.to_string());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_addrs_handles_commas_repeats_and_duplicates() {
        let got = split_addrs(&["a:1,b:2", " c:3 ", "a:1", ",,"]);
        assert_eq!(got, ["a:1", "b:2", "c:3"]);
    }

    #[test]
    fn bad_address_is_rejected() {
        let settings = ChannelSettings {
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
            channels_per_node: 1,
            down_for: Duration::from_secs(1),
            tls: None,
            token: None,
        };
        let err = endpoint("not an address", &settings).unwrap_err();
        assert_eq!(err.category(), "invalid_address");
    }

    #[tokio::test]
    async fn down_mark_expires_and_clears() {
        let settings = ChannelSettings {
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
            channels_per_node: 2,
            down_for: Duration::from_millis(30),
            tls: None,
            token: None,
        };
        let node = NodeConn::open("127.0.0.1:1", &settings).unwrap();
        assert!(!node.is_down());
        node.mark_down();
        assert!(node.is_down());
        node.mark_up();
        assert!(!node.is_down());
        node.mark_down();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!node.is_down());
    }

    #[tokio::test]
    async fn once_down_a_node_gets_one_trial_per_period() {
        let settings = ChannelSettings {
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_millis(400),
            channels_per_node: 1,
            down_for: Duration::from_millis(300),
            tls: None,
            token: None,
        };
        let node = NodeConn::open("127.0.0.1:1", &settings).unwrap();
        assert!(node.usable(), "an up node is usable");
        node.mark_down();
        assert!(!node.usable());
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(node.usable(), "the first caller after the period tries it");
        assert!(!node.usable(), "the others keep away while the trial runs");
        assert!(!node.usable());
        // The trial failed: down again; or it answered: up for everyone.
        node.mark_down();
        assert!(!node.usable());
        node.mark_up();
        assert!(node.usable());
        assert!(node.usable());
        // A trial that never reports is given up after its timeout and a period.
        node.mark_down();
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(node.usable());
        tokio::time::sleep(Duration::from_millis(900)).await;
        assert!(
            node.usable(),
            "a second trial once the first must have timed out"
        );
    }
}
