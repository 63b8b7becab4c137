//! The answers OpenAI documents for requests that a valid key cannot serve because of the
//! request itself: a foreign `OpenAI-Organization` (401 `mismatched_organization`), a path
//! outside a restricted key's scopes (401 "Missing scopes"), and one request larger than the
//! key's whole tokens-per-minute limit (429 "Request too large"). Off until configured; they
//! apply to every key whose behaviour is `ok`.

use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::Value;

use super::openai::{chat_prompt_tokens, error_response};

/// The organisation, scopes and TPM limit the mock's keys have.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProviderRules {
    /// The keys' organisation: a request naming another one in `OpenAI-Organization` is refused.
    pub organization: Option<String>,
    /// Paths (after `/v1/`, by prefix) the keys' scopes do not cover.
    pub restricted_paths: Vec<String>,
    /// The keys' tokens per minute: one request asking for more (prompt words + `max_tokens`
    /// or `max_completion_tokens`) is refused.
    pub tpm_limit: Option<u64>,
}

impl ProviderRules {
    /// The refusal a request gets, if one of the rules applies to it.
    pub(super) fn refusal(&self, path: &str, headers: &HeaderMap, body: &[u8]) -> Option<Response> {
        let asked = headers
            .get("openai-organization")
            .map(|v| v.to_str().unwrap_or_default());
        if let (Some(own), Some(asked)) = (&self.organization, asked) {
            if own != asked {
                let message = "OpenAI-Organization header should match organization for API key";
                let (status, kind) = (StatusCode::UNAUTHORIZED, "invalid_request_error");
                return Some(error_response(
                    status,
                    message,
                    kind,
                    Some("mismatched_organization"),
                ));
            }
        }
        let path = path.trim_start_matches("/v1/");
        if self
            .restricted_paths
            .iter()
            .any(|p| path.starts_with(p.as_str()))
        {
            let message = "You have insufficient permissions for this operation. Missing scopes: \
                           api.management.read. Check that you have the correct role in your \
                           organization (Reader, Writer, Owner) and project (Member, Owner), and \
                           if you're using a restricted API key, that it has the necessary scopes.";
            let (status, kind) = (StatusCode::UNAUTHORIZED, "invalid_request_error");
            return Some(error_response(status, message, kind, None));
        }
        let limit = self.tpm_limit?;
        let request: Value = serde_json::from_slice(body).ok()?;
        let output = ["max_tokens", "max_completion_tokens"]
            .iter()
            .find_map(|field| request.get(*field).and_then(Value::as_u64))
            .unwrap_or(0);
        let requested = chat_prompt_tokens(&request).saturating_add(output);
        if requested <= limit {
            return None;
        }
        let model = request
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or("gpt-4.1");
        let message = format!(
            "Request too large for {model} in organization org-mock on tokens per min (TPM): \
             Limit {limit}, Requested {requested}. The input or output tokens must be reduced in \
             order to run successfully. Visit https://platform.openai.com/account/rate-limits to \
             learn more."
        );
        let status = StatusCode::TOO_MANY_REQUESTS;
        Some(error_response(
            status,
            &message,
            "tokens",
            Some("rate_limit_exceeded"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> ProviderRules {
        ProviderRules {
            organization: Some("org-own".into()),
            restricted_paths: vec!["organization/".into()],
            tpm_limit: Some(1000),
        }
    }

    fn status(r: Option<Response>) -> Option<u16> {
        r.map(|r| r.status().as_u16())
    }

    #[test]
    fn each_rule_answers_as_openai_documents_and_only_when_it_applies() {
        let chat = br#"{"model":"gpt-4.1","messages":[{"role":"user","content":"hi"}]}"#;
        let huge = br#"{"model":"gpt-4.1","max_tokens":1000000,"messages":[]}"#;
        let mut foreign = HeaderMap::new();
        foreign.insert("openai-organization", "org-other".parse().unwrap());
        let mut own = HeaderMap::new();
        own.insert("openai-organization", "org-own".parse().unwrap());
        let none = HeaderMap::new();
        let path = "/v1/chat/completions";
        assert_eq!(status(rules().refusal(path, &none, chat)), None);
        assert_eq!(status(rules().refusal(path, &own, chat)), None);
        assert_eq!(status(rules().refusal(path, &foreign, chat)), Some(401));
        let users = "/v1/organization/users";
        assert_eq!(status(rules().refusal(users, &none, b"")), Some(401));
        assert_eq!(status(rules().refusal(path, &none, huge)), Some(429));
        assert_eq!(
            status(ProviderRules::default().refusal(users, &foreign, huge)),
            None
        );
    }
}
