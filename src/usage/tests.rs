use super::*;
use proptest::prelude::*;

const CHAT_STREAM: &str = concat!(
    ": keep-alive comment\n\n",
    "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4.1-2025-04-14\",",
    "\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}],\"usage\":null}\n\n",
    "data: {\"id\":\"c1\",\"model\":\"gpt-4.1-2025-04-14\",",
    "\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
    "data: {\"id\":\"c1\",\"model\":\"gpt-4.1-2025-04-14\",\"choices\":[],",
    "\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":2,\"total_tokens\":14}}\n\n",
    "data: [DONE]\n\n",
);

const CHAT_USAGE: Usage = Usage {
    prompt_tokens: 12,
    completion_tokens: 2,
    total_tokens: 14,
};

fn scan(chunks: &[&[u8]]) -> SseUsageScanner {
    let mut scanner = SseUsageScanner::new();
    for chunk in chunks {
        scanner.feed(chunk);
    }
    scanner
}

#[test]
fn json_body_usage_for_chat_and_embeddings() {
    let chat = br#"{"id":"x","model":"gpt-4.1","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":3,"total_tokens":12}}"#;
    let expected = Usage {
        prompt_tokens: 9,
        completion_tokens: 3,
        total_tokens: 12,
    };
    assert_eq!(usage_from_json_body(chat), Some(expected));
    let embeddings = br#"{"object":"list","data":[],"model":"text-embedding-3-small","usage":{"prompt_tokens":8,"total_tokens":8}}"#;
    let expected = Usage {
        prompt_tokens: 8,
        completion_tokens: 0,
        total_tokens: 8,
    };
    assert_eq!(usage_from_json_body(embeddings), Some(expected));
    let model = model_from_json_body(embeddings);
    assert_eq!(model.as_deref(), Some("text-embedding-3-small"));
}

#[test]
fn one_parse_gives_the_usage_and_the_model_that_served_it() {
    for body in [
        &br#"{"id":"x","model":"gpt-4.1","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":3,"total_tokens":12}}"#[..],
        br#"{"usage":{"prompt_tokens":8,"total_tokens":8}}"#,
        br#"{"model":"","usage":{"input_tokens":5,"output_tokens":7}}"#,
        br#"{"type":"response.completed","response":{"model":"m","usage":{"input_tokens":1,"output_tokens":2}}}"#,
    ] {
        let usage = usage_from_json_body(body).expect("usage");
        let both = usage_and_model_from_json_body(body);
        assert_eq!(both, Some((usage, model_from_json_body(body))));
    }
    // No usage: nothing, whatever the model says.
    assert_eq!(
        usage_and_model_from_json_body(br#"{"model":"gpt-4.1"}"#),
        None
    );
    assert_eq!(usage_and_model_from_json_body(b"not json"), None);
}

#[test]
fn json_body_usage_in_responses_api_spelling_sums_missing_total() {
    let body = br#"{"model":"gpt-4.1","usage":{"input_tokens":5,"output_tokens":7}}"#;
    let expected = Usage {
        prompt_tokens: 5,
        completion_tokens: 7,
        total_tokens: 12,
    };
    assert_eq!(usage_from_json_body(body), Some(expected));
}

#[test]
fn json_body_without_usable_usage_is_none() {
    for body in [
        &br#"{"usage":null}"#[..],
        br#"{"usage":{}}"#,
        br#"{"usage":"lots"}"#,
        br#"{"choices":[]}"#,
        br#"[1,2]"#,
        b"not json",
        b"",
    ] {
        assert_eq!(
            usage_from_json_body(body),
            None,
            "{:?}",
            String::from_utf8_lossy(body)
        );
    }
    assert_eq!(model_from_json_body(br#"{"model":""}"#), None);
    assert_eq!(model_from_json_body(br#"{"model":3}"#), None);
}

#[test]
fn stream_final_chunk_usage_and_model_are_seen() {
    let scanner = scan(&[CHAT_STREAM.as_bytes()]);
    assert_eq!(scanner.usage(), Some(CHAT_USAGE));
    assert_eq!(scanner.model(), Some("gpt-4.1-2025-04-14"));
}

#[test]
fn events_that_arrive_whole_are_read_in_place_without_a_copy() {
    // One chunk per event, as an upstream sends them, in each line-ending style.
    for ending in ["\n", "\r\n", "\r"] {
        let text = CHAT_STREAM.replace('\n', ending);
        let mut scanner = SseUsageScanner::new();
        for event in text.split_inclusive(&format!("{ending}{ending}")) {
            scanner.feed(event.as_bytes());
        }
        assert_eq!(scanner.usage(), Some(CHAT_USAGE), "{ending:?}");
        assert_eq!(
            (scanner.line.capacity(), scanner.data.capacity()),
            (0, 0),
            "nothing buffered with {ending:?} line endings"
        );
    }
    // An event cut in two is still read whole, through the buffers.
    let bytes = CHAT_STREAM.as_bytes();
    let cut = CHAT_STREAM.find("\"usage\":{").expect("usage event");
    let scanner = scan(&[&bytes[..cut], &bytes[cut..]]);
    assert_eq!(scanner.usage(), Some(CHAT_USAGE));
}

#[test]
fn stream_split_at_every_byte_boundary_gives_identical_usage() {
    let bytes = CHAT_STREAM.as_bytes();
    for split in 0..=bytes.len() {
        let (head, tail) = bytes.split_at(split);
        let scanner = scan(&[head, tail]);
        assert_eq!(scanner.usage(), Some(CHAT_USAGE), "split at {split}");
        assert_eq!(
            scanner.model(),
            Some("gpt-4.1-2025-04-14"),
            "split at {split}"
        );
    }
    let one_byte_chunks: Vec<&[u8]> = bytes.chunks(1).collect();
    assert_eq!(scan(&one_byte_chunks).usage(), Some(CHAT_USAGE));
}

#[test]
fn crlf_and_cr_line_endings_split_anywhere() {
    for ending in ["\r\n", "\r"] {
        let stream = CHAT_STREAM.replace('\n', ending);
        let bytes = stream.as_bytes();
        for split in 0..=bytes.len() {
            let (head, tail) = bytes.split_at(split);
            let scanner = scan(&[head, tail]);
            assert_eq!(
                scanner.usage(),
                Some(CHAT_USAGE),
                "{ending:?} split at {split}"
            );
        }
    }
}

#[test]
fn multi_line_data_without_space_is_joined() {
    let stream = "data:{\"usage\":\ndata: {\"prompt_tokens\":1,\r\ndata:\"total_tokens\":4}}\n\n";
    let expected = Usage {
        prompt_tokens: 1,
        completion_tokens: 0,
        total_tokens: 4,
    };
    assert_eq!(scan(&[stream.as_bytes()]).usage(), Some(expected));
}

#[test]
fn event_fields_and_comments_do_not_disturb_data() {
    let stream =
        "event: message\nid: 7\n: note\nretry: 10\ndata: {\"usage\":{\"total_tokens\":3}}\n\n";
    assert_eq!(
        scan(&[stream.as_bytes()]).usage().map(|u| u.total_tokens),
        Some(3)
    );
}

#[test]
fn null_usage_after_real_usage_does_not_erase_it() {
    let stream =
        "data: {\"usage\":{\"total_tokens\":3}}\n\ndata: {\"usage\":null}\n\ndata: oops\n\n";
    assert_eq!(
        scan(&[stream.as_bytes()]).usage().map(|u| u.total_tokens),
        Some(3)
    );
}

#[test]
fn unterminated_event_counts_only_after_finish() {
    let mut scanner = scan(&[b"data: {\"usage\":{\"total_tokens\":3}}"]);
    assert_eq!(scanner.usage(), None);
    scanner.finish();
    assert_eq!(scanner.usage().map(|u| u.total_tokens), Some(3));
}

#[test]
fn responses_api_completed_event_carries_usage() {
    let stream = "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"model\":\"gpt-4.1\",\"usage\":{\"input_tokens\":2,\"output_tokens\":3,\"total_tokens\":5}}}\n\n";
    let scanner = scan(&[stream.as_bytes()]);
    assert_eq!(scanner.usage().map(|u| u.completion_tokens), Some(3));
    assert_eq!(scanner.model(), Some("gpt-4.1"));
}

#[test]
fn oversized_event_is_dropped_and_the_next_one_still_counts() {
    let padding = "x".repeat(MAX_EVENT_BYTES + 10);
    let big = format!("data: {{\"pad\":\"{padding}\",\"usage\":{{\"total_tokens\":99}}}}\n\n");
    let small = "data: {\"usage\":{\"total_tokens\":5}}\n\n";
    let mut scanner = SseUsageScanner::new();
    for chunk in big.as_bytes().chunks(4096) {
        scanner.feed(chunk);
        assert!(scanner.line.len() + scanner.data.len() <= MAX_EVENT_BYTES);
    }
    assert_eq!(scanner.usage(), None);
    scanner.feed(small.as_bytes());
    assert_eq!(scanner.usage().map(|u| u.total_tokens), Some(5));
    assert!(scanner.line.capacity() <= KEEP_CAPACITY);
}

#[test]
fn endless_line_without_newline_stays_bounded() {
    let mut scanner = SseUsageScanner::new();
    let chunk = vec![b'a'; 64 * 1024];
    for _ in 0..40 {
        scanner.feed(&chunk);
    }
    assert!(scanner.line.capacity() <= MAX_EVENT_BYTES);
    scanner.feed(b"\n\ndata: {\"usage\":{\"total_tokens\":1}}\n\n");
    assert_eq!(scanner.usage().map(|u| u.total_tokens), Some(1));
}

proptest! {
    #[test]
    fn scanner_never_panics_on_arbitrary_bytes(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..16),
    ) {
        let mut scanner = SseUsageScanner::new();
        for chunk in &chunks {
            scanner.feed(chunk);
        }
        scanner.finish();
        let _ = (scanner.usage(), scanner.model());
    }

    #[test]
    fn scanner_never_panics_on_sse_like_text(text in "(data:|event:| |\\{|\\}|\"usage\"|\r|\n|[0-9a-z:,\"])*") {
        let mut scanner = SseUsageScanner::new();
        scanner.feed(text.as_bytes());
        let _ = usage_from_json_body(text.as_bytes());
        let _ = model_from_json_body(text.as_bytes());
        let _ = usage_and_model_from_json_body(text.as_bytes());
    }

    #[test]
    fn any_chunking_gives_the_same_usage(cuts in proptest::collection::vec(any::<usize>(), 0..8)) {
        let bytes = CHAT_STREAM.replace('\n', "\r\n").into_bytes();
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        cuts.sort_unstable();
        let mut scanner = SseUsageScanner::new();
        let mut start = 0;
        for cut in cuts.into_iter().chain([bytes.len()]) {
            scanner.feed(&bytes[start..cut]);
            start = cut;
        }
        prop_assert_eq!(scanner.usage(), Some(CHAT_USAGE));
    }
}

/// The reader as it was before the typed one: `usage` and `model` built as `serde_json::Value`s
/// and read from there. The typed reader must answer the same for every body.
mod whole_values {
    use super::Usage;
    use serde::Deserialize;
    use serde_json::Value;

    #[derive(Deserialize)]
    pub struct Envelope {
        #[serde(default)]
        usage: Option<Value>,
        #[serde(default)]
        model: Option<Value>,
        #[serde(default)]
        response: Option<Inner>,
    }

    #[derive(Deserialize)]
    struct Inner {
        #[serde(default)]
        usage: Option<Value>,
        #[serde(default)]
        model: Option<Value>,
    }

    fn from_value(value: &Value) -> Option<Usage> {
        let count = |names: &[&str]| names.iter().find_map(|name| value.get(*name)?.as_u64());
        let prompt = count(&["prompt_tokens", "input_tokens"]);
        let completion = count(&["completion_tokens", "output_tokens"]);
        let total = count(&["total_tokens"]);
        if prompt.is_none() && completion.is_none() && total.is_none() {
            return None;
        }
        let (prompt, completion) = (prompt.unwrap_or(0), completion.unwrap_or(0));
        Some(Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: total.unwrap_or(prompt.saturating_add(completion)),
        })
    }

    /// (parsed at all, usage, model)
    pub fn read(json: &[u8]) -> (bool, Option<Usage>, Option<String>) {
        let Ok(e) = serde_json::from_slice::<Envelope>(json) else {
            return (false, None, None);
        };
        let nested = e.response.as_ref().and_then(|r| r.usage.as_ref());
        let usage = e.usage.as_ref().or(nested).and_then(from_value);
        let nested = e.response.as_ref().and_then(|r| r.model.as_ref());
        let model = (e.model.as_ref().and_then(Value::as_str))
            .or_else(|| nested.and_then(Value::as_str))
            .filter(|m| !m.is_empty())
            .map(str::to_owned);
        (true, usage, model)
    }
}

/// A JSON value of any kind, small, as text: what a provider might put where a count, a model
/// or a usage object is expected.
fn any_json() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("null".to_string()),
        Just("true".to_string()),
        Just("\"\"".to_string()),
        Just("\"gpt-4o\"".to_string()),
        Just("\"a\\\"b\\u00e9\"".to_string()),
        Just("-0".to_string()),
        Just("-3".to_string()),
        Just("2.5".to_string()),
        Just("1e2".to_string()),
        Just("18446744073709551615".to_string()),
        Just("18446744073709551616".to_string()),
        (0u64..100_000).prop_map(|n| n.to_string()),
    ];
    leaf.prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..3)
                .prop_map(|v| format!("[{}]", v.join(","))),
            proptest::collection::vec(("[a-z_]{1,6}", inner), 0..3).prop_map(|kv| {
                let fields: Vec<String> = kv.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                format!("{{{}}}", fields.join(","))
            }),
        ]
    })
}

/// A count's value: mostly a whole number, else any value.
fn count_json() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => (0u64..1_000).prop_map(|n| n.to_string()),
        1 => any_json(),
    ]
}

/// A `usage` value: mostly an object of count fields (repeats and escaped names included),
/// sometimes any value at all.
fn usage_json() -> impl Strategy<Value = String> {
    let name = prop_oneof![
        Just("prompt_tokens"),
        Just("input_tokens"),
        Just("completion_tokens"),
        Just("output_tokens"),
        Just("total_tokens"),
        Just("prompt\\u005ftokens"),
        Just("prompt_tokens_details"),
        Just("other"),
    ];
    prop_oneof![
        3 => proptest::collection::vec((name, count_json()), 0..7).prop_map(|kv| {
            let fields: Vec<String> = kv.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
            format!("{{{}}}", fields.join(","))
        }),
        1 => any_json(),
    ]
}

/// An answer's body: its fields in any order, `usage`, `model` and `response` among them
/// (sometimes twice), and the rest any JSON.
fn body_json() -> impl Strategy<Value = String> {
    let inner = proptest::collection::vec(
        prop_oneof![
            usage_json().prop_map(|u| format!("\"usage\":{u}")),
            any_json().prop_map(|m| format!("\"model\":{m}")),
            any_json().prop_map(|v| format!("\"id\":{v}")),
        ],
        0..3,
    )
    .prop_map(|f| format!("{{{}}}", f.join(",")));
    let field = prop_oneof![
        3 => usage_json().prop_map(|u| format!("\"usage\":{u}")),
        3 => any_json().prop_map(|m| format!("\"model\":{m}")),
        2 => inner.prop_map(|r| format!("\"response\":{r}")),
        1 => any_json().prop_map(|r| format!("\"response\":{r}")),
        2 => any_json().prop_map(|v| format!("\"choices\":{v}")),
    ];
    proptest::collection::vec(field, 0..5).prop_map(|f| format!("{{{}}}", f.join(",")))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn the_typed_reader_answers_as_reading_whole_values_did(body in body_json()) {
        let (parsed, usage, model) = whole_values::read(body.as_bytes());
        let typed = Envelope::parse(body.as_bytes());
        prop_assert_eq!(typed.is_some(), parsed, "{}", body);
        if let Some(e) = typed {
            prop_assert_eq!(e.usage(), usage, "{}", body);
            prop_assert_eq!(e.model().map(str::to_owned), model, "{}", body);
        }
        prop_assert_eq!(usage_from_json_body(body.as_bytes()), usage);
    }
}

/// A body of `body_json`'s, then changed at one place: a byte replaced by one that matters to
/// JSON's grammar, a byte taken out, or the text cut short.
fn damaged_body_json() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        Just(b'"'),
        Just(b'\\'),
        Just(b'{'),
        Just(b'}'),
        Just(b'['),
        Just(b']'),
        Just(b','),
        Just(b':'),
        Just(b' '),
        Just(b'0'),
        Just(b'-'),
        Just(b'.'),
        Just(b'e'),
        Just(b'u'),
        Just(0x01),
        Just(0xff),
        Just(0xc3),
        any::<u8>(),
    ];
    (body_json(), any::<prop::sample::Index>(), 0..3u8, byte).prop_map(|(body, at, how, b)| {
        let mut bytes = body.into_bytes();
        let i = at.index(bytes.len().max(1)).min(bytes.len());
        match how {
            0 if i < bytes.len() => bytes[i] = b,
            1 if i < bytes.len() => {
                bytes.remove(i);
            }
            _ => bytes.truncate(i),
        }
        bytes
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    /// The one pass over the text (`usage/fields.rs`) answers what serde_json reading the
    /// whole text answers: for sound bodies and for each kind of damage.
    #[test]
    fn the_one_pass_reader_answers_as_serde_json_does(
        body in prop_oneof![body_json().prop_map(String::into_bytes), damaged_body_json()],
    ) {
        let fast = Envelope::parse(&body);
        let whole = Envelope::parse_whole(&body);
        let text = String::from_utf8_lossy(&body);
        prop_assert_eq!(fast.is_some(), whole.is_some(), "{}", text);
        if let (Some(f), Some(w)) = (fast, whole) {
            prop_assert_eq!(f.usage(), w.usage(), "{}", text);
            prop_assert_eq!(f.model(), w.model(), "{}", text);
        }
    }
}

#[test]
fn the_one_pass_reader_finds_an_answers_fields_and_leaves_odd_ones_to_serde_json() {
    use super::fields::{top_level, Fields};
    let body = br#" {"id":"c-1","object":"chat.completion","created":1,"model":"gpt-4o",
        "choices":[{"index":0,"message":{"role":"assistant","content":"hi \"there\""},
        "logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":3,
        "completion_tokens":2,"total_tokens":5},"n":-1.5e+3} "#;
    let Fields::Object {
        usage: Some(u),
        model: Some(m),
        plain_model: true,
    } = top_level(body)
    else {
        panic!("{:?}", top_level(body));
    };
    assert_eq!(&body[m], br#""gpt-4o""#);
    assert!(body[u].starts_with(b"{\"prompt_tokens\":3"));
    let accented = "{\"id\":\"réponse à la question\",\"model\":\"modèle-é\"}";
    assert!(matches!(
        top_level(accented.as_bytes()),
        Fields::Object {
            usage: None,
            model: Some(_),
            plain_model: true
        }
    ));
    for odd in [
        &br#"{"response":{"usage":{"total_tokens":1}}}"#[..],
        br#"{"model":"a","model":"b"}"#,
        br#"{"us\u0061ge":{"total_tokens":1}}"#,
        br#"{"usage":{"total_tokens":1}} x"#,
        br#"{"usage":01}"#,
        b"{\"a\":\"\x01\"}",
        b"{\"a\":\"long enough to take eight at a time \xc3( here\"}",
        b"{\"a\":1,\xc3\xa9}",
        br#"["usage"]"#,
    ] {
        assert_eq!(
            top_level(odd),
            Fields::Unsure,
            "{}",
            String::from_utf8_lossy(odd)
        );
    }
}

#[test]
fn a_model_without_escapes_is_read_in_place_and_one_with_them_is_unescaped() {
    let e = Envelope::parse(br#"{"model":"gpt-4o"}"#).unwrap();
    assert!(matches!(
        e.model.0,
        Some(std::borrow::Cow::Borrowed("gpt-4o"))
    ));
    let e = Envelope::parse(br#"{"model":"gpt\u002d4o"}"#).unwrap();
    assert_eq!(e.model(), Some("gpt-4o"));
}
