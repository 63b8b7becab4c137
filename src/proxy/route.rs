//! Canary routing (README.md, "Pointing applications at keygate") and request ids.

use std::net::SocketAddr;

use axum::http::HeaderMap;

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

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// `X-Gray-Group: treatment|control` forces a group; otherwise the identity's bucket decides
/// (identity: `X-User-Id`, else the client's name, else the remote address).
pub fn route_for(headers: &HeaderMap, client: &str, remote: Option<SocketAddr>) -> Route {
    match header(headers, "x-gray-group")
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("treatment") => return Route::Canary,
        Some("control") => return Route::Stable,
        _ => {}
    }
    if let Some(user) = header(headers, "x-user-id") {
        return Route::Bucket(bucket(user));
    }
    if !client.is_empty() {
        return Route::Bucket(bucket(client));
    }
    let ip = remote.map(|r| r.ip().to_string()).unwrap_or_default();
    Route::Bucket(bucket(&ip))
}

/// The caller's `X-Request-Id` when it is short and plain, else a fresh UUID.
pub fn request_id(headers: &HeaderMap) -> String {
    header(headers, "x-request-id")
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

    #[test]
    fn headers_force_groups_and_pick_identities() {
        let mut h = HeaderMap::new();
        h.insert("x-gray-group", "Treatment".parse().unwrap());
        assert_eq!(route_for(&h, "c", None), Route::Canary);
        h.insert("x-gray-group", "control".parse().unwrap());
        assert_eq!(route_for(&h, "c", None), Route::Stable);
        let mut h = HeaderMap::new();
        h.insert("x-user-id", "alice".parse().unwrap());
        assert_eq!(route_for(&h, "c", None), Route::Bucket(bucket("alice")));
        assert_eq!(
            route_for(&HeaderMap::new(), "bot", None),
            Route::Bucket(bucket("bot"))
        );
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
