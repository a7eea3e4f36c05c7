//! The opaque causal context.
//!
//! A `get` returns a context covering the versions it read; sending it back with the next
//! `put` or `delete` of the same key says which versions the write supersedes. The bytes
//! are the node's business: the client never looks inside. On the command line and in
//! JSON a context travels as URL-safe base64 without padding; the empty context (a blind
//! write) is the empty string.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;

use crate::error::{Error, Result};

/// An opaque causal context, as returned by `get`, `put` and `delete`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Context(Bytes);

impl Context {
    /// The empty context: a `put` with it is a blind write that adds a sibling.
    pub fn empty() -> Self {
        Self(Bytes::new())
    }

    /// Wraps context bytes received from a node.
    pub fn from_bytes(bytes: impl Into<Bytes>) -> Self {
        Self(bytes.into())
    }

    /// The raw bytes, to send to a node.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    /// Whether this is the empty context.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// URL-safe base64 without padding; the empty context is the empty string.
    pub fn to_base64(&self) -> String {
        URL_SAFE_NO_PAD.encode(&self.0)
    }

    /// Parses the text [`Context::to_base64`] produced. Surrounding whitespace is ignored;
    /// the empty string is the empty context.
    pub fn from_base64(text: &str) -> Result<Self> {
        let trimmed = text.trim();
        URL_SAFE_NO_PAD
            .decode(trimmed)
            .map(|v| Self(Bytes::from(v)))
            .map_err(|e| Error::InvalidContext {
                text: shorten(trimmed),
                reason: e.to_string(),
            })
    }
}

impl std::fmt::Display for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl std::str::FromStr for Context {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::from_base64(s)
    }
}

fn shorten(text: &str) -> String {
    const MAX: usize = 40;
    match text.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for raw in [
            vec![],
            vec![0u8],
            vec![0xff, 0xfe, 0xfd],
            (0..=255u8).collect::<Vec<_>>(),
        ] {
            let ctx = Context::from_bytes(raw.clone());
            let text = ctx.to_base64();
            assert!(!text.contains('='), "no padding: {text}");
            assert!(
                !text.contains('+') && !text.contains('/'),
                "URL-safe: {text}"
            );
            assert_eq!(Context::from_base64(&text).unwrap(), ctx);
            assert_eq!(
                text.parse::<Context>().unwrap().as_bytes().as_ref(),
                &raw[..]
            );
        }
    }

    #[test]
    fn empty_context_is_empty_string() {
        assert_eq!(Context::empty().to_base64(), "");
        assert!(Context::from_base64("").unwrap().is_empty());
        assert!(Context::from_base64("  \n").unwrap().is_empty());
    }

    #[test]
    fn url_safe_alphabet() {
        assert_eq!(Context::from_bytes(vec![0xfb, 0xff]).to_base64(), "-_8");
    }

    #[test]
    fn invalid_base64_is_a_clear_error() {
        for bad in ["not base64!", "a", "ab+/", "abc="] {
            let err = Context::from_base64(bad).unwrap_err();
            assert_eq!(err.category(), "invalid_context", "{bad}");
            assert!(err.to_string().contains("invalid context"), "{err}");
        }
    }

    #[test]
    fn long_invalid_text_is_shortened() {
        let text = "!".repeat(500);
        let err = Context::from_base64(&text).unwrap_err().to_string();
        assert!(err.len() < 200, "{err}");
    }
}
