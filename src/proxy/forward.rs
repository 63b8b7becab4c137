//! What crosses the proxy: the upstream URL (always the pool's configured scheme, host and port)
//! and the headers each way (no client credentials up, no hop-by-hop either way, never a secret
//! down).

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use bytes::Bytes;

use crate::config::Secret;
use crate::error::ApiError;

/// Hop-by-hop headers (RFC 9110 section 7.6.1) plus the ones keygate owns or replaces.
const NOT_FORWARDED_UP: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "proxy-authenticate",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "accept-encoding",
    "x-keygate-pool",
    "x-gray-group",
    "x-user-id",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
    "cookie",
];

const NOT_FORWARDED_DOWN: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "set-cookie",
];

/// Headers named in `Connection:` are hop-by-hop too.
fn connection_listed(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}

/// The client's headers as sent upstream, with the pool key as the only credential.
pub fn upstream_headers(client: &HeaderMap, auth: &HeaderValue) -> HeaderMap {
    let listed = connection_listed(client);
    let mut out = HeaderMap::with_capacity(client.len() + 1);
    for (name, value) in client {
        let n = name.as_str();
        if NOT_FORWARDED_UP.contains(&n)
            || listed.iter().any(|l| l == n)
            || n.starts_with("x-keygate-")
        {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out.insert(http::header::AUTHORIZATION, auth.clone());
    out
}

/// The upstream's headers as sent to the client.
pub fn downstream_headers(upstream: &HeaderMap) -> HeaderMap {
    let listed = connection_listed(upstream);
    let mut out = HeaderMap::with_capacity(upstream.len() + 6);
    for (name, value) in upstream {
        let n = name.as_str();
        if NOT_FORWARDED_DOWN.contains(&n) || listed.iter().any(|l| l == n) {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out
}

fn invalid_path() -> ApiError {
    ApiError::bad_request("invalid_path", "The request path is not allowed.")
}

/// [`upstream_url`] as the URI the upstream client sends to, converted once per request.
pub fn upstream_uri(
    base: &url::Url,
    path: &str,
    query: Option<&str>,
) -> Result<http::Uri, ApiError> {
    let url = upstream_url(base, path, query)?;
    http::Uri::try_from(url.as_str()).map_err(|_| invalid_path())
}

/// `base_url` + `/` + the path after `/v1/` + the query. The result must keep the base's
/// scheme, host and port and stay under its path: a request can never steer a pool key to
/// another host (absolute URLs, `//host`, `..`, encoded slashes and backslashes are refused).
pub fn upstream_url(
    base: &url::Url,
    path: &str,
    query: Option<&str>,
) -> Result<url::Url, ApiError> {
    let lower = path.to_ascii_lowercase();
    if path.starts_with('/')
        || path.contains("//")
        || path.contains('\\')
        || lower.contains("%2f")
        || lower.contains("%5c")
        || lower.contains("%2e")
        || path.split('/').any(|seg| seg == ".." || seg == ".")
        || path.contains("://")
    {
        return Err(invalid_path());
    }
    let base_path = base.path().trim_end_matches('/');
    let mut url = base.clone();
    url.set_path(&format!("{base_path}/{path}"));
    url.set_query(query.filter(|q| !q.is_empty()));
    let same_origin = url.scheme() == base.scheme()
        && url.host_str() == base.host_str()
        && url.port_or_known_default() == base.port_or_known_default()
        && url.path().starts_with(base_path);
    if !same_origin {
        return Err(invalid_path());
    }
    Ok(url)
}

/// Replaces every occurrence of `secret` in an upstream answer (some providers quote the key
/// they were sent in their error messages and headers) with its fingerprint, so a passed-through
/// answer never hands a pool key to the client. A header value that cannot be rewritten is
/// dropped.
pub fn redact_secret(headers: &mut HeaderMap, body: Bytes, secret: &Secret) -> Bytes {
    let needle = secret.expose().as_bytes();
    if needle.is_empty() {
        return body;
    }
    let fingerprint = secret.fingerprint();
    let leaked: Vec<HeaderName> = (headers.iter())
        .filter(|(_, v)| contains(v.as_bytes(), needle))
        .map(|(n, _)| n.clone())
        .collect();
    for name in leaked {
        let values: Vec<HeaderValue> = (headers.get_all(&name).iter())
            .filter_map(|v| {
                let replaced = replace_all(v.as_bytes(), needle, fingerprint.as_bytes());
                HeaderValue::from_bytes(&replaced).ok()
            })
            .collect();
        headers.remove(&name);
        for v in values {
            headers.append(name.clone(), v);
        }
    }
    if contains(&body, needle) {
        Bytes::from(replace_all(&body, needle, fingerprint.as_bytes()))
    } else {
        body
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn replace_all(hay: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(hay.len());
    let mut i = 0;
    while i < hay.len() {
        if hay[i..].starts_with(needle) {
            out.extend_from_slice(with);
            i += needle.len();
        } else {
            out.push(hay[i]);
            i += 1;
        }
    }
    out
}

/// Sets a response header from a string, skipping values that are not valid header text.
pub fn set_header(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(HeaderName::from_static(name), v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> url::Url {
        url::Url::parse("https://api.example.com/v1").unwrap()
    }

    #[test]
    fn paths_stay_under_the_configured_base() {
        let u = upstream_url(&base(), "chat/completions", Some("a=1")).unwrap();
        assert_eq!(
            u.as_str(),
            "https://api.example.com/v1/chat/completions?a=1"
        );
        for evil in [
            "/etc/passwd",
            "//evil.com/x",
            "../x",
            "a/../../x",
            "http://evil.com/x",
            "a%2f..%2fx",
            "a\\..\\x",
            "%2e%2e/x",
            "./x",
        ] {
            assert!(
                upstream_url(&base(), evil, None).is_err(),
                "{evil} accepted"
            );
        }
    }

    #[test]
    fn an_upstream_answer_quoting_the_key_reaches_the_client_redacted() {
        let secret = Secret::new("sk-abcdefghijk9f3a");
        let mut h = HeaderMap::new();
        h.insert(
            "x-debug",
            "key=sk-abcdefghijk9f3a; again sk-abcdefghijk9f3a"
                .parse()
                .unwrap(),
        );
        h.insert("content-type", "application/json".parse().unwrap());
        let body = Bytes::from_static(b"{\"message\":\"Bad key sk-abcdefghijk9f3a.\"}");
        let body = redact_secret(&mut h, body, &secret);
        assert_eq!(&body[..], "{\"message\":\"Bad key sk-…9f3a.\"}".as_bytes());
        assert_eq!(h["x-debug"], "key=sk-…9f3a; again sk-…9f3a");
        assert_eq!(h["content-type"], "application/json");
        let clean = Bytes::from_static(b"nothing here");
        assert_eq!(redact_secret(&mut h, clean.clone(), &secret), clean);
    }

    #[test]
    fn client_credentials_and_hop_by_hop_headers_never_go_up() {
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer client-token".parse().unwrap());
        h.insert("connection", "keep-alive, x-secret-hop".parse().unwrap());
        h.insert("x-secret-hop", "1".parse().unwrap());
        h.insert("host", "evil.com".parse().unwrap());
        h.insert("x-keygate-pool", "prod".parse().unwrap());
        h.insert("content-type", "application/json".parse().unwrap());
        let up = upstream_headers(&h, &HeaderValue::from_static("Bearer sk-pool"));
        assert_eq!(up.get("authorization").unwrap(), "Bearer sk-pool");
        assert_eq!(up.get_all("authorization").iter().count(), 1);
        for gone in ["connection", "x-secret-hop", "host", "x-keygate-pool"] {
            assert!(up.get(gone).is_none(), "{gone} forwarded");
        }
        assert_eq!(up.get("content-type").unwrap(), "application/json");
    }
}
