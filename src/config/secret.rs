//! Keeping secrets out of output: the [`Secret`] type (masked in `Debug`, `Display` and
//! `Serialize`, compared in constant time), [`redact_url`] for passwords in store URLs, and
//! [`hash_token`] for client tokens, which the config holds only as hashes.

use std::fmt;

use serde::{Serialize, Serializer};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const MASK: &str = "*****";
/// Secret prefixes that are safe to show in a fingerprint (they say which provider, not which key).
const KNOWN_PREFIXES: [&str; 4] = ["sk-", "sk_", "pk-", "hf_"];
/// Shorter secrets show no characters at all in their fingerprint.
const FINGERPRINT_MIN_CHARS: usize = 12;

/// An upstream API key or the admin token. `Debug`, `Display` and `Serialize` print `*****`, so a
/// secret cannot leak through a log line, `{:?}` of a config, or an admin JSON answer.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself, for the one place that needs it: the upstream `Authorization` header.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A masked form for humans, like `sk-…9f3a`: a known provider prefix, then the last four
    /// characters. Secrets shorter than 12 characters show only `…`.
    pub fn fingerprint(&self) -> String {
        let chars: Vec<char> = self.0.chars().collect();
        if chars.len() < FINGERPRINT_MIN_CHARS {
            return "…".to_string();
        }
        let prefix = KNOWN_PREFIXES
            .iter()
            .find(|p| self.0.starts_with(*p))
            .map_or("", |p| *p);
        let tail: String = chars[chars.len() - 4..].iter().collect();
        format!("{prefix}…{tail}")
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(MASK)
    }
}

/// Constant-time comparison, so comparing a presented token does not leak a matching prefix.
impl PartialEq for Secret {
    fn eq(&self, other: &Secret) -> bool {
        self.0.as_bytes().ct_eq(other.0.as_bytes()).into()
    }
}

impl Eq for Secret {}

/// `url` with any `user:password@` part replaced by `*****@`, for logs and `Debug`
/// (`redis://:pw@host:6379/0` → `redis://*****@host:6379/0`).
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://*****{}", &rest[at..]),
        None => url.to_string(),
    }
}

/// The lowercase hex SHA-256 of a client token, as `[[clients]] token_sha256` expects.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}
