//! The vocabulary of a key pool: key ids, key states, and the outcome of one upstream attempt.
//!
//! Everything here is pure data; the store (`crate::store`) owns the transitions and
//! `classify` turns an upstream answer into an [`Outcome`].

pub mod classify;
pub mod headers;

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// The longest key id, pool name or group name we accept. Ids end up inside Redis key names and
/// metric labels, so they are short and drawn from a safe alphabet.
pub const MAX_ID_LEN: usize = 64;

/// Whether `s` is a valid id for a key, pool or group: 1..=64 of `[A-Za-z0-9._-]`, not starting
/// with a dot (no `..` path tricks, no Redis glob or hash-tag metacharacters).
pub fn is_valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// The id of an upstream key within its pool (never the secret). Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyId(Arc<str>);

impl KeyId {
    /// A key id, if `s` is a valid id (see [`is_valid_id`]).
    pub fn new(s: &str) -> Option<KeyId> {
        is_valid_id(s).then(|| KeyId(Arc::from(s)))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The cluster-wide state of one key (README.md, "Key states").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    Active,
    Cooling,
    Open,
    HalfOpen,
    Disabled,
    Draining,
}

impl KeyState {
    pub const ALL: [KeyState; 6] = [
        KeyState::Active,
        KeyState::Cooling,
        KeyState::Open,
        KeyState::HalfOpen,
        KeyState::Disabled,
        KeyState::Draining,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Active => "active",
            KeyState::Cooling => "cooling",
            KeyState::Open => "open",
            KeyState::HalfOpen => "half_open",
            KeyState::Disabled => "disabled",
            KeyState::Draining => "draining",
        }
    }

    pub fn parse(s: &str) -> Option<KeyState> {
        KeyState::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for KeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one upstream attempt says about the key it used (README.md, "Key states", the outcome table).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Success,
    RateLimited,
    QuotaExhausted,
    Unauthorized,
    ServerError,
    Timeout,
    ConnectError,
    ClientError,
}

impl Outcome {
    pub const ALL: [Outcome; 8] = [
        Outcome::Success,
        Outcome::RateLimited,
        Outcome::QuotaExhausted,
        Outcome::Unauthorized,
        Outcome::ServerError,
        Outcome::Timeout,
        Outcome::ConnectError,
        Outcome::ClientError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::RateLimited => "rate_limited",
            Outcome::QuotaExhausted => "quota_exhausted",
            Outcome::Unauthorized => "unauthorized",
            Outcome::ServerError => "server_error",
            Outcome::Timeout => "timeout",
            Outcome::ConnectError => "connect_error",
            Outcome::ClientError => "client_error",
        }
    }

    /// An outcome that counts against its key (the reasons of retries and cooldowns): neither
    /// a success nor the caller's own fault.
    pub fn is_failure(self) -> bool {
        !matches!(self, Outcome::Success | Outcome::ClientError)
    }

    pub fn parse(s: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.as_str() == s)
    }

    /// Whether the attempt failed because of the key or the upstream, so another key may succeed.
    pub fn is_retryable(self) -> bool {
        !matches!(self, Outcome::Success | Outcome::ClientError)
    }

    /// Whether this outcome counts toward the key's circuit breaker.
    pub fn is_breaker_error(self) -> bool {
        matches!(
            self,
            Outcome::ServerError | Outcome::Timeout | Outcome::ConnectError
        )
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_reject_path_tricks_and_redis_metacharacters() {
        for bad in [
            "",
            "..",
            "../x",
            "a/b",
            "a b",
            "a{b}",
            "a*",
            "a:b",
            "é",
            &"x".repeat(65),
        ] {
            assert!(!is_valid_id(bad), "{bad:?} accepted");
        }
        for good in ["prod-001", "a", "k.1_x", &"x".repeat(64)] {
            assert!(is_valid_id(good), "{good:?} rejected");
        }
    }

    #[test]
    fn states_and_outcomes_round_trip_their_names() {
        for s in KeyState::ALL {
            assert_eq!(KeyState::parse(s.as_str()), Some(s));
        }
        for o in Outcome::ALL {
            assert_eq!(Outcome::parse(o.as_str()), Some(o));
        }
    }
}
