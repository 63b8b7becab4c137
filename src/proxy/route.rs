//! Canary routing and request ids. A request forced by `X-Gray-Group` goes to its group;
//! otherwise the bucket (0..100) of its identity decides, the identity chosen by the pool's
//! `canary.sticky_by` (README.md, "Canary routing").

use std::net::SocketAddr;

use axum::http::{HeaderMap, HeaderName};

use crate::config::StickyBy;
use crate::store::Route;

/// FNV-1a (64-bit) of the identity, mod 100: a fixed, seedless function, so every replica and
/// every restart puts the same identity in the same bucket.
pub fn bucket(identity: &str) -> u8 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in identity.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % 100) as u8
}

// The request headers read on every request, named at compile time: `HeaderMap::get` with a
// string parses the name first.
const X_GRAY_GROUP: HeaderName = HeaderName::from_static("x-gray-group");
const X_USER_ID: HeaderName = HeaderName::from_static("x-user-id");

fn header<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// Who sent a request, as far as canary routing cares.
pub struct Identity<'a> {
    pub headers: &'a HeaderMap,
    /// The client token's name.
    pub client: &'a str,
    /// The JSON body's `user` field.
    pub body_user: Option<&'a str>,
    pub remote: Option<SocketAddr>,
}

/// `X-Gray-Group: treatment|control` forces a group; otherwise the bucket of the identity
/// `sticky` names: `user`: `X-User-Id`, else the body's `user`, else a draw per request (so an
/// application with one token splits by percent); `client`: `X-User-Id`, else the client's name,
/// else the remote address; `random`: a draw per request.
pub fn route_for(who: &Identity<'_>, sticky: StickyBy) -> Route {
    match header(who.headers, &X_GRAY_GROUP)
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("treatment") => return Route::Canary,
        Some("control") => return Route::Stable,
        _ => {}
    }
    let user_id = header(who.headers, &X_USER_ID);
    let body_user = who.body_user.filter(|u| !u.is_empty());
    let remote = || who.remote.map(|r| r.ip().to_string()).unwrap_or_default();
    let identity: Option<String> = match sticky {
        StickyBy::Random => None,
        StickyBy::User => user_id.or(body_user).map(str::to_string),
        StickyBy::Client => Some(match user_id {
            Some(user) => user.to_string(),
            None if !who.client.is_empty() => who.client.to_string(),
            None => remote(),
        }),
    };
    match identity {
        Some(id) => Route::Bucket(bucket(&id)),
        None => Route::Bucket((rand::random::<u32>() % 100) as u8),
    }
}

/// The caller's `X-Request-Id` when it is short and plain, else a fresh UUID.
pub fn request_id(headers: &HeaderMap) -> String {
    header(headers, &super::forward::X_REQUEST_ID)
        .filter(|v| {
            v.len() <= 128
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_fixed_and_spread() {
        // Fixed values: a change here would move users between groups across a deploy.
        assert_eq!(bucket("user-1"), bucket("user-1"));
        assert_eq!(bucket(""), (0xcbf2_9ce4_8422_2325u64 % 100) as u8);
        let mut counts = [0u32; 100];
        for i in 0..100_000 {
            counts[bucket(&format!("u{i}")) as usize] += 1;
        }
        assert!(counts.iter().all(|c| (800..1200).contains(c)), "{counts:?}");
    }

    fn route(h: &HeaderMap, body_user: Option<&str>, sticky: StickyBy) -> Route {
        let who = Identity {
            headers: h,
            client: "bot",
            body_user,
            remote: None,
        };
        route_for(&who, sticky)
    }

    #[test]
    fn headers_force_groups_and_pick_identities() {
        let mut h = HeaderMap::new();
        h.insert("x-gray-group", "Treatment".parse().unwrap());
        assert_eq!(route(&h, None, StickyBy::Random), Route::Canary);
        h.insert("x-gray-group", "control".parse().unwrap());
        assert_eq!(route(&h, None, StickyBy::User), Route::Stable);
        let mut h = HeaderMap::new();
        h.insert("x-user-id", "alice".parse().unwrap());
        for sticky in [StickyBy::User, StickyBy::Client] {
            let got = route(&h, Some("bob"), sticky);
            assert_eq!(got, Route::Bucket(bucket("alice")));
        }
        let none = HeaderMap::new();
        let by_user = route(&none, Some("bob"), StickyBy::User);
        assert_eq!(by_user, Route::Bucket(bucket("bob")));
        let by_client = route(&none, Some("bob"), StickyBy::Client);
        assert_eq!(by_client, Route::Bucket(bucket("bot")));
    }

    #[test]
    fn without_an_identity_each_request_draws_its_bucket() {
        let none = HeaderMap::new();
        let buckets: std::collections::HashSet<u8> = (0..200)
            .filter_map(|_| match route(&none, None, StickyBy::User) {
                Route::Bucket(b) => Some(b),
                _ => None,
            })
            .collect();
        assert!(buckets.len() > 20, "{buckets:?}");
    }

    #[test]
    fn request_ids_are_kept_only_when_plain() {
        let mut h = HeaderMap::new();
        h.insert("x-request-id", "abc-123".parse().unwrap());
        assert_eq!(request_id(&h), "abc-123");
        h.insert("x-request-id", "a b\"<script>".parse().unwrap());
        assert_ne!(request_id(&h), "a b\"<script>");
    }
}
