//! Every endpoint and error path of one gateway, each answer recorded for the search.

use keygate::config::Secret;
use keygate::mock::{Behavior, MockUpstream};
use reqwest::{Method, RequestBuilder};

use super::{leaks, Seen, ADMIN_TOKEN, CLIENT_TOKEN, SECRET_A, SECRET_B, SECRET_C, SECRET_D};
use crate::harness::gateway::{chat, TestGateway};

const KEYS: [(&str, &str); 4] = [
    ("ka", SECRET_A),
    ("kb", SECRET_B),
    ("kc", SECRET_C),
    ("kd", SECRET_D),
];

/// The gateway under test, its upstream, and what the test saw so far.
pub(super) struct Run<'a> {
    pub c: reqwest::Client,
    pub gw: &'a TestGateway,
    pub mock: &'a MockUpstream,
    pub seen: Seen,
}

impl Run<'_> {
    fn post(&self, body: serde_json::Value) -> RequestBuilder {
        let url = self.gw.url("/v1/chat/completions");
        self.c.post(url).bearer_auth(CLIENT_TOKEN).json(&body)
    }

    fn admin(&self, method: Method, path: &str) -> RequestBuilder {
        self.c
            .request(method, self.gw.url(path))
            .bearer_auth(ADMIN_TOKEN)
    }

    async fn send(&mut self, what: &str, rb: RequestBuilder) -> u16 {
        let r = rb.send().await.unwrap();
        self.seen.record(what, r).await
    }

    /// Every key answers `b` for its next two requests.
    fn script_all(&self, b: &Behavior) {
        for (_, secret) in KEYS {
            self.mock.script(secret, vec![b.clone(), b.clone()]);
        }
    }

    /// Puts every key back in rotation through the admin API.
    async fn enable_all(&mut self) {
        for (id, _) in KEYS {
            let path = format!("/admin/pools/p/keys/{id}/enable");
            let s = self.send("enable", self.admin(Method::POST, &path)).await;
            assert_eq!(s, 200);
        }
    }

    /// Successes (plain and streamed), passed-through upstream 4xx (one quoting the key it was
    /// sent with, in its body and a header), a missing model.
    pub async fn proxy_answers(&mut self) {
        for stream in [false, true, false, true] {
            let s = self.send("success", self.post(chat("m", stream))).await;
            assert_eq!(s, 200);
        }
        for (_, secret) in KEYS {
            let error = serde_json::json!({"message": format!("Bad request for key {secret}"),
                "type": "invalid_request_error", "param": null, "code": null});
            let body = serde_json::json!({ "error": error }).to_string();
            let headers = vec![("x-upstream-debug".into(), format!("key={secret}"))];
            let status = 400;
            let quoting = Behavior::Status {
                status,
                headers,
                body,
            };
            self.mock.set_steady(secret, quoting);
        }
        let s = self.send("upstream 400", self.post(chat("m", false))).await;
        assert_eq!(s, 400);
        for (_, secret) in KEYS {
            self.mock.set_steady(secret, Behavior::Ok);
        }
        self.mock.set_missing_models(&["gone"]);
        let s = self
            .send("model missing", self.post(chat("gone", false)))
            .await;
        assert_eq!(s, 404);
    }

    /// Every failure kind on every key at once (the admin API repairs the keys after each),
    /// then a stream the upstream breaks off.
    pub async fn upstream_failures(&mut self) {
        let forbidden = Behavior::Status {
            status: 403,
            headers: vec![],
            body: r#"{"error":{"message":"forbidden"}}"#.into(),
        };
        let slow = Behavior::Delay {
            ms: 1_000,
            then: Box::new(Behavior::Ok),
        };
        let rate_limited = Behavior::RateLimited {
            retry_after: Some("30".into()),
        };
        let storms = [
            ("429", rate_limited, 429),
            ("5xx", Behavior::ServerError(503), 502),
            // Benched until keygate's probe confirms: every key cooling, retry later.
            ("401", Behavior::Unauthorized, 429),
            ("403", forbidden, 429),
            ("quota", Behavior::Quota, 429),
            ("timeout", slow, 504),
        ];
        for (what, b, want) in storms {
            self.script_all(&b);
            let s = self.send(what, self.post(chat("m", false))).await;
            assert_eq!(s, want, "{what}");
            let s = self.send(what, self.post(chat("m", true))).await;
            assert!(s >= 400, "{what}: {s}");
            for (_, secret) in KEYS {
                self.mock.script(secret, vec![]);
            }
            self.enable_all().await;
        }
        self.every_key_revoked().await;
        for (_, secret) in KEYS {
            let drop = Behavior::StreamThenDrop { events: 2 };
            self.mock.script(secret, vec![drop]);
        }
        self.send("dropped stream", self.post(chat("m", true)))
            .await;
        for (_, secret) in KEYS {
            self.mock.script(secret, vec![]);
        }
    }

    /// Every key revoked: benched at first (429), then, once keygate's probes confirm, no key
    /// will recover by itself (503).
    async fn every_key_revoked(&mut self) {
        for (_, secret) in KEYS {
            self.mock.set_steady(secret, Behavior::Unauthorized);
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let s = self.send("revoked", self.post(chat("m", false))).await;
            if s == 503 {
                break;
            }
            assert_eq!(s, 429, "revoked keys");
            assert!(
                std::time::Instant::now() < deadline,
                "the probes never confirmed"
            );
        }
        for (_, secret) in KEYS {
            self.mock.set_steady(secret, Behavior::Ok);
        }
        self.enable_all().await;
    }

    /// Bad client input, including credentials presented in the wrong place.
    pub async fn client_errors(&mut self) {
        let url = self.gw.url("/v1/chat/completions");
        let c = self.c.clone();
        let with_token = |rb: RequestBuilder| rb.bearer_auth(CLIENT_TOKEN);
        let big = serde_json::json!({"model": "m", "pad": "x".repeat(70_000)});
        let bad = [
            (
                "invalid json",
                with_token(c.post(&url))
                    .header("content-type", "application/json")
                    .body("{"),
            ),
            (
                "media type",
                with_token(c.post(&url))
                    .header("content-type", "text/plain")
                    .body("x"),
            ),
            ("too large", with_token(c.post(&url)).json(&big)),
            (
                "model not allowed",
                with_token(c.post(&url)).json(&chat("other", false)),
            ),
            ("no token", c.post(&url).json(&chat("m", false))),
            (
                "admin token as client",
                c.post(&url)
                    .bearer_auth(ADMIN_TOKEN)
                    .json(&chat("m", false)),
            ),
            (
                "pool key as client",
                c.post(&url).bearer_auth(SECRET_A).json(&chat("m", false)),
            ),
            (
                "pool key in pool header",
                with_token(c.post(&url))
                    .header("x-keygate-pool", SECRET_B)
                    .json(&chat("m", false)),
            ),
            (
                "bad path",
                with_token(c.post(self.gw.url("/v1/../admin"))).json(&chat("m", false)),
            ),
            ("unknown path", with_token(c.get(self.gw.url("/nope")))),
        ];
        for (what, rb) in bad {
            let s = self.send(what, rb).await;
            assert!((400..500).contains(&s), "{what}: {s}");
        }
    }

    /// Health, readiness, metrics, and every admin endpoint, good and bad.
    pub async fn operator_endpoints(&mut self) {
        for path in ["/healthz", "/readyz", "/metrics"] {
            let s = self.send(path, self.c.get(self.gw.url(path))).await;
            assert_eq!(s, 200, "{path}");
        }
        let json = |v: serde_json::Value| Some(v);
        let calls = [
            (Method::GET, "/admin/pools", None),
            (Method::GET, "/admin/pools/p/keys", None),
            (Method::POST, "/admin/pools/p/keys/ka/disable", None),
            (Method::POST, "/admin/pools/p/keys/ka/drain", None),
            (Method::POST, "/admin/pools/p/keys/ka/enable", None),
            (Method::POST, "/admin/pools/p/keys/kb/reset", None),
            (
                Method::PUT,
                "/admin/pools/p/keys/kc/weight",
                json(serde_json::json!({"weight": 2})),
            ),
            (
                Method::PUT,
                "/admin/pools/p/keys/kc/weight",
                json(serde_json::json!({"weight": "heavy"})),
            ),
            (
                Method::PUT,
                "/admin/pools/p/keys/kd/group",
                json(serde_json::json!({"group": "stable"})),
            ),
            (
                Method::PUT,
                "/admin/pools/p/keys/kd/group",
                json(serde_json::json!({"group": "no such group"})),
            ),
            (
                Method::PUT,
                "/admin/pools/p/canary",
                json(serde_json::json!({"percent": 0})),
            ),
            (Method::POST, "/admin/reload", None),
            (Method::POST, "/admin/pools/p/keys/nope/disable", None),
            (Method::GET, "/admin/pools/nope/keys", None),
        ];
        for (m, path, body) in calls {
            let mut rb = self.admin(m.clone(), path);
            if let Some(b) = body {
                rb = rb.json(&b);
            }
            let s = self.send(&format!("admin {m} {path}"), rb).await;
            assert!(s < 500, "admin {m} {path}: {s}");
        }
        let pools = self.gw.url("/admin/pools");
        let refused = [
            ("admin: no token", self.c.get(&pools)),
            (
                "admin: client token",
                self.c.get(&pools).bearer_auth(CLIENT_TOKEN),
            ),
            ("admin: pool key", self.c.get(&pools).bearer_auth(SECRET_B)),
            (
                "admin: bad id",
                self.admin(Method::POST, "/admin/pools/p/keys/..%2Fx/disable"),
            ),
        ];
        for (what, rb) in refused {
            let s = self.send(what, rb).await;
            assert!((400..500).contains(&s), "{what}: {s}");
        }
    }

    /// The admin listing shows each key's fingerprint: at most its last four characters.
    pub async fn check_fingerprints(&self) {
        let r = self.admin(Method::GET, "/admin/pools/p/keys").send().await;
        let listing: serde_json::Value = r.unwrap().json().await.unwrap();
        let keys = listing["keys"].as_array().unwrap();
        for (id, secret) in KEYS {
            let key = keys.iter().find(|k| k["id"] == id).unwrap();
            let fp = key["fingerprint"].as_str().unwrap();
            assert_eq!(fp, Secret::new(secret).fingerprint());
            assert!(fp.ends_with(&secret[secret.len() - 4..]), "{fp}");
            assert!(leaks(secret, fp).is_empty(), "{fp}");
        }
    }

    /// With Redis gone: requests (served degraded, or refused), readiness, metrics, admin.
    pub async fn store_down(&mut self) {
        for _ in 0..5 {
            let s = self.send("store down", self.post(chat("m", false))).await;
            assert!(s == 200 || s == 503, "store down: {s}");
        }
        for path in ["/readyz", "/metrics"] {
            let rb = self.c.get(self.gw.url(path));
            self.send(&format!("store down {path}"), rb).await;
        }
        let rb = self.admin(Method::GET, "/admin/pools");
        self.send("store down admin", rb).await;
    }
}
