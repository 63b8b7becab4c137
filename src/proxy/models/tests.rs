use super::*;

fn allowed() -> Vec<String> {
    vec!["gpt-4.1".to_string(), "gpt-4o-mini".to_string()]
}

fn check(content_type: &str, body: &str, inference: bool) -> Result<(), &'static str> {
    let mut h = HeaderMap::new();
    if !content_type.is_empty() {
        h.insert(http::header::CONTENT_TYPE, content_type.parse().unwrap());
    }
    check_allowed(&Method::POST, &h, body.as_bytes(), &allowed(), inference).map_err(|e| e.code)
}

fn json(body: &str) -> Result<(), &'static str> {
    check("application/json", body, true)
}

const CT: &str = "multipart/form-data; boundary=XyZ";

fn form(fields: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (name, value) in fields {
        out.push_str(&format!(
            "--XyZ\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
        ));
    }
    out.push_str("--XyZ--\r\n");
    out
}

#[test]
fn an_allowed_json_model_passes_and_others_name_the_problem() {
    assert_eq!(json(r#"{"model":"gpt-4.1","messages":[]}"#), Ok(()));
    assert_eq!(json(r#"{"model":"o1-pro"}"#), Err("model_not_allowed"));
    assert_eq!(json(r#"{"model":3}"#), Err("model_not_allowed"));
    assert_eq!(json(r#"{"messages":[]}"#), Err("missing_model"));
    assert_eq!(
        json(r#"{"model":"gpt-4.1","MODEL":"o1-pro"}"#),
        Err("ambiguous_model")
    );
    assert_eq!(json(r#"{"Model":"gpt-4.1"}"#), Err("ambiguous_model"));
    assert_eq!(
        json(r#"{"model":"gpt-4.1","model":"o1-pro"}"#),
        Err("ambiguous_model")
    );
    // An escaped key is the same key.
    assert_eq!(
        json(r#"{"model":"gpt-4.1","mod\u0065l":"o1-pro"}"#),
        Err("ambiguous_model")
    );
    assert_eq!(json(r#"{"model":"gpt-4.1"} trailing"#), Err("invalid_json"));
    // A nested `model` is not the request's.
    assert_eq!(
        json(r#"{"model":"gpt-4.1","tools":[{"model":"x"}]}"#),
        Ok(())
    );
}

#[test]
fn bodies_keygate_cannot_read_are_refused_and_bodiless_requests_pass() {
    for ct in [
        "application/octet-stream",
        "application/x-www-form-urlencoded",
        "text/plain",
        "",
    ] {
        assert_eq!(
            check(ct, "model=o1-pro", true),
            Err("model_unreadable"),
            "{ct}"
        );
    }
    let h = HeaderMap::new();
    assert!(check_allowed(&Method::GET, &h, b"", &allowed(), true).is_ok());
    assert!(check_allowed(&Method::POST, &h, b"", &allowed(), true).is_ok());
    assert!(check_allowed(&Method::POST, &h, b"x", &[], true).is_ok());
}

#[test]
fn a_missing_model_passes_off_the_inference_paths() {
    assert_eq!(
        check("application/json", r#"{"purpose":"batch"}"#, false),
        Ok(())
    );
    let upload = form(&[("purpose", "assistants"), ("file", "data")]);
    assert_eq!(check(CT, &upload, false), Ok(()));
    assert_eq!(check(CT, &upload, true), Err("missing_model"));
}

#[test]
fn multipart_bodies_are_checked_by_their_model_field() {
    assert_eq!(
        check(CT, &form(&[("file", "x"), ("model", "gpt-4.1")]), true),
        Ok(())
    );
    assert_eq!(
        check(CT, &form(&[("model", "o1-pro")]), true),
        Err("model_not_allowed")
    );
    let twice = form(&[("model", "gpt-4.1"), ("model", "o1-pro")]);
    assert_eq!(check(CT, &twice, true), Err("ambiguous_model"));
    let variant = form(&[("model", "gpt-4.1"), ("MODEL", "o1-pro")]);
    assert_eq!(check(CT, &variant, true), Err("ambiguous_model"));
    let quoted = "multipart/form-data; boundary=\"XyZ\"";
    assert_eq!(check(quoted, &form(&[("model", "gpt-4.1")]), true), Ok(()));
    let preamble = format!("ignored preamble\r\n{}", form(&[("model", "gpt-4.1")]));
    assert_eq!(check(CT, &preamble, true), Ok(()));
}

#[test]
fn multipart_shapes_other_parsers_may_read_differently_are_refused() {
    let cases = [
        ("multipart/form-data", form(&[("model", "gpt-4.1")])),
        (CT, "--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\ngpt-4.1".into()),
        (CT, "--XyZ\nContent-Disposition: form-data; name=\"model\"\n\ngpt-4.1\n--XyZ--".into()),
        (CT, "--XyZ\r\nContent-Disposition: form-data; name=\"x\"\nContent-Disposition: form-data; name=\"model\"\r\n\r\no1-pro\r\n--XyZ--".into()),
        (CT, "--XyZ\r\nContent-Disposition: form-data; name=\"x\"\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\no1-pro\r\n--XyZ--".into()),
        (CT, "--XyZ\r\nContent-Disposition: form-data; name*=utf-8''model\r\n\r\no1-pro\r\n--XyZ--".into()),
        (CT, "--XyZ\r\nContent-Disposition: form-data; name=\"mo\\\"del\"\r\n\r\no1-pro\r\n--XyZ--".into()),
        (CT, "--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\nContent-Transfer-Encoding: base64\r\n\r\nbzEtcHJv\r\n--XyZ--".into()),
        (CT, "--XyZ\r\nContent-Disposition: form-data;\r\n name=\"model\"\r\n\r\no1-pro\r\n--XyZ--".into()),
        (CT, "no delimiter at all".into()),
    ];
    for (ct, body) in cases {
        assert_eq!(check(ct, &body, true), Err("model_unreadable"), "{body:?}");
    }
}
