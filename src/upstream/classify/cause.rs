//! Upstream error answers that the client's request caused, not the key that carried it.
//!
//! A foreign `OpenAI-Organization` (or project), a path a restricted key may not use, or one
//! request larger than the key's whole tokens-per-minute budget says nothing bad about the key:
//! another request on the same key would succeed. Such answers are passed through to the
//! client, leave the key alone and are never retried on another key (README.md, "Who is
//! blamed"). Pure functions over the status, the body and the request path.

use http::StatusCode;

use super::ErrorEnvelope;

/// Why an error answer is the client's doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientCause {
    /// 401/403 `mismatched_organization`, `invalid_organization` (or the project variants):
    /// the request named an organisation or project the key does not belong to.
    ForeignOrganization,
    /// 401/403 "insufficient permissions ... Missing scopes" on a path that is not inference:
    /// the key is restricted, the client asked for something outside its scopes.
    MissingScope,
    /// 429 "Request too large for MODEL ... on tokens per min (TPM)": this one request is
    /// larger than the key's whole per-minute budget; smaller requests still go through.
    RequestTooLarge,
}

impl ClientCause {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientCause::ForeignOrganization => "foreign_organization",
            ClientCause::MissingScope => "missing_scope",
            ClientCause::RequestTooLarge => "request_too_large",
        }
    }
}

/// Error codes with which OpenAI refuses an organisation or project the key is not part of.
const FOREIGN_ORGANIZATION_CODES: [&str; 4] = [
    "mismatched_organization",
    "invalid_organization",
    "mismatched_project",
    "invalid_project",
];

/// Lower-case phrases of the same answers, for providers that send no code.
const FOREIGN_ORGANIZATION_PHRASES: [&str; 2] = [
    "openai-organization header should match organization for api key",
    "openai-project header should match project for api key",
];

/// Lower-case phrases of a restricted key's refusal.
const MISSING_SCOPE_PHRASES: [&str; 2] = ["missing scopes:", "insufficient permissions"];

/// The path prefixes (after `/v1/`) of the inference endpoints. A key that cannot serve these is
/// broken for the pool; a refusal anywhere else (organisation admin, usage, fine-tuning...) is
/// about what the client asked for.
const INFERENCE_PATHS: [&str; 7] = [
    "chat/completions",
    "completions",
    "embeddings",
    "responses",
    "audio/",
    "images/",
    "moderations",
];

/// Whether `path` (the client's path after `/v1/`, no query) is an inference endpoint.
pub fn is_inference_path(path: &str) -> bool {
    let path = path.trim_start_matches('/');
    INFERENCE_PATHS.iter().any(|prefix| {
        path.strip_prefix(prefix)
            .is_some_and(|rest| prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'))
    })
}

/// The client's part in an error answer, if the answer says the request caused it.
/// `inference` is [`is_inference_path`] of the request's path.
pub fn client_cause(status: StatusCode, body: &[u8], inference: bool) -> Option<ClientCause> {
    let error = serde_json::from_slice::<ErrorEnvelope>(body)
        .ok()
        .and_then(|envelope| envelope.error);
    let message = match &error {
        Some(e) => e
            .message
            .as_deref()
            .unwrap_or_default()
            .to_ascii_lowercase(),
        // Not the OpenAI shape: match the phrases in the raw text.
        None => String::from_utf8_lossy(body).to_ascii_lowercase(),
    };
    let has_code = |wanted: &str| error.as_ref().is_some_and(|e| e.has_code(wanted));
    match status.as_u16() {
        401 | 403 => {
            let foreign = FOREIGN_ORGANIZATION_CODES.iter().any(|c| has_code(c))
                || FOREIGN_ORGANIZATION_PHRASES
                    .iter()
                    .any(|p| message.contains(p));
            if foreign {
                return Some(ClientCause::ForeignOrganization);
            }
            let scope = MISSING_SCOPE_PHRASES.iter().any(|p| message.contains(p));
            (scope && !inference).then_some(ClientCause::MissingScope)
        }
        // A plain TPM rate limit ("Rate limit reached ... on tokens per min") has the same type
        // and code: only the "request too large" wording tells one request's size.
        429 => (message.contains("request too large") && !has_code("insufficient_quota"))
            .then_some(ClientCause::RequestTooLarge),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORG: &[u8] = br#"{"error":{"message":"OpenAI-Organization header should match organization for API key","type":"invalid_request_error","param":null,"code":"mismatched_organization"}}"#;
    const INVALID_ORG: &[u8] = br#"{"error":{"message":"No such organization: org-x.","type":"invalid_request_error","param":null,"code":"invalid_organization"}}"#;
    const SCOPES: &[u8] = br#"{"error":{"message":"You have insufficient permissions for this operation. Missing scopes: api.management.read. Check that you have the correct role in your organization (Reader, Writer, Owner) and project (Member, Owner), and if you're using a restricted API key, that it has the necessary scopes.","type":"invalid_request_error","param":null,"code":null}}"#;
    const TOO_LARGE: &[u8] = br#"{"error":{"message":"Request too large for gpt-4.1 in organization org-abc on tokens per min (TPM): Limit 30000, Requested 1000050. The input or output tokens must be reduced in order to run successfully.","type":"tokens","param":null,"code":"rate_limit_exceeded"}}"#;
    const TPM_LIMIT: &[u8] = br#"{"error":{"message":"Rate limit reached for gpt-4.1 in organization org-abc on tokens per min (TPM): Limit 30000, Used 29000, Requested 2000.","type":"tokens","param":null,"code":"rate_limit_exceeded"}}"#;
    const BAD_KEY: &[u8] = br#"{"error":{"message":"Incorrect API key provided: sk-...abcd.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#;

    fn cause(code: u16, body: &[u8], inference: bool) -> Option<ClientCause> {
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::IM_A_TEAPOT);
        client_cause(status, body, inference)
    }

    #[test]
    fn a_foreign_organization_is_the_clients_on_any_path() {
        for code in [401, 403] {
            for inference in [true, false] {
                let expected = Some(ClientCause::ForeignOrganization);
                assert_eq!(cause(code, ORG, inference), expected);
                assert_eq!(cause(code, INVALID_ORG, inference), expected);
            }
        }
        let text = b"OpenAI-Organization header should match organization for API key";
        assert_eq!(
            cause(401, text, true),
            Some(ClientCause::ForeignOrganization)
        );
    }

    #[test]
    fn missing_scopes_are_the_clients_only_off_the_inference_paths() {
        assert_eq!(cause(401, SCOPES, false), Some(ClientCause::MissingScope));
        assert_eq!(cause(403, SCOPES, false), Some(ClientCause::MissingScope));
        assert_eq!(cause(401, SCOPES, true), None);
    }

    #[test]
    fn one_request_above_the_tpm_is_the_clients_a_tpm_rate_limit_is_not() {
        assert_eq!(
            cause(429, TOO_LARGE, true),
            Some(ClientCause::RequestTooLarge)
        );
        assert_eq!(cause(429, TPM_LIMIT, true), None);
        assert_eq!(cause(429, b"", true), None);
    }

    #[test]
    fn a_bad_key_and_other_statuses_blame_nobody_here() {
        assert_eq!(cause(401, BAD_KEY, true), None);
        assert_eq!(cause(401, BAD_KEY, false), None);
        assert_eq!(cause(401, b"", false), None);
        assert_eq!(cause(400, ORG, true), None);
        assert_eq!(cause(500, TOO_LARGE, true), None);
        assert_eq!(cause(200, SCOPES, false), None);
    }

    #[test]
    fn inference_paths_are_matched_by_whole_segments() {
        for p in [
            "chat/completions",
            "completions",
            "embeddings",
            "responses",
            "responses/resp_1/input_items",
            "audio/transcriptions",
            "images/generations",
            "moderations",
        ] {
            assert!(is_inference_path(p), "{p}");
        }
        for p in [
            "organization/users",
            "models",
            "files",
            "completionsx",
            "chat/completions2",
            "fine_tuning/jobs",
            "",
        ] {
            assert!(!is_inference_path(p), "{p}");
        }
    }
}
