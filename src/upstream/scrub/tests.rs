use super::*;

const KEY: &str = "sk-abcdefghijk9f3a";
const OTHER: &str = "sk-abcdefghijk9f3aZZ"; // the first key is a prefix of this one

fn scrubber(secrets: &[&str]) -> Arc<Scrubber> {
    let secrets: Vec<Secret> = secrets.iter().map(|s| Secret::new(*s)).collect();
    Arc::new(Scrubber::new(&secrets))
}

/// Feeds `chunks` through a stream scrubber and returns everything sent.
fn streamed(s: &Arc<Scrubber>, chunks: &[&[u8]]) -> Vec<u8> {
    let mut stream = StreamScrub::new(s.clone());
    let mut out = Vec::new();
    for c in chunks {
        out.extend_from_slice(&stream.feed(Bytes::copy_from_slice(c)));
    }
    out.extend_from_slice(&stream.finish());
    out
}

fn json_escaped_fully(s: &str) -> String {
    s.bytes().map(|b| format!("\\u{b:04X}")).collect()
}

#[test]
fn a_plain_key_is_masked_to_the_same_length() {
    let s = scrubber(&[KEY]);
    let body = format!("{{\"message\":\"Bad key {KEY}.\"}}");
    let out = s.scrub_whole(Bytes::from(body.clone()));
    assert_eq!(out.len(), body.len());
    let text = String::from_utf8(out.to_vec()).unwrap();
    assert!(!text.contains("abcdefghijk"), "{text}");
    assert!(text.contains("sk-…9f3a"), "{text}");
}

#[test]
fn json_escaped_and_mixed_forms_are_masked() {
    let s = scrubber(&[KEY]);
    let mixed = "sk\\u002dabc\\u0064efghijk9f3a";
    for form in [
        json_escaped_fully(KEY),
        json_escaped_fully(KEY).to_lowercase(),
        mixed.to_string(),
    ] {
        let body = format!("{{\"m\":\"{form}\"}}");
        let out = s.scrub_whole(Bytes::from(body.clone()));
        assert_eq!(out.len(), body.len());
        let text = String::from_utf8(out.to_vec()).unwrap();
        assert!(
            !text.contains("\\u0064") && !text.contains("\\u0061"),
            "{text}"
        );
        let decoded: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(
            !decoded["m"].as_str().unwrap().contains("abcdefghijk"),
            "{text}"
        );
    }
    let slash = scrubber(&["key/with\"quote"]);
    let out = slash.scrub_whole(Bytes::from_static(b"x key\\/with\\\"quote y"));
    assert!(!String::from_utf8_lossy(&out).contains("with"), "{out:?}");
}

#[test]
fn a_key_split_at_every_byte_of_every_form_is_masked() {
    let s = scrubber(&[KEY, OTHER]);
    for key in [KEY, OTHER] {
        for form in [key.to_string(), json_escaped_fully(key)] {
            let body = format!("data: {{\"k\":\"{form}\"}}\n\n");
            let bytes = body.as_bytes();
            for cut in 0..=bytes.len() {
                for cut2 in [cut, (cut + 3).min(bytes.len())] {
                    let out = streamed(&s, &[&bytes[..cut], &bytes[cut..cut2], &bytes[cut2..]]);
                    assert_eq!(out.len(), bytes.len(), "{form} cut at {cut}/{cut2}");
                    let text = String::from_utf8_lossy(&out);
                    assert!(!text.contains("abcdefghijk"), "{form} cut at {cut}: {text}");
                    assert!(!text.contains("\\u0064"), "{form} cut at {cut}: {text}");
                }
            }
        }
    }
}

#[test]
fn a_chunk_without_a_secret_start_is_passed_on_whole_and_at_once() {
    let s = scrubber(&[KEY]);
    let mut stream = StreamScrub::new(s.clone());
    let event = Bytes::from_static(b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n");
    assert_eq!(stream.feed(event.clone()), event);
    // A tail that may start the key waits; the rest goes at once.
    let out = stream.feed(Bytes::from_static(b"data: sk-abc"));
    assert_eq!(&out[..], b"data: ");
    let out = stream.feed(Bytes::from_static(b"xyz\n\n"));
    assert_eq!(&out[..], b"sk-abcxyz\n\n");
    assert!(stream.finish().is_empty());
}

#[test]
fn headers_holding_a_key_are_masked_or_dropped() {
    let s = scrubber(&[KEY]);
    let mut h = HeaderMap::new();
    h.insert("x-debug", format!("key={KEY}").parse().unwrap());
    h.insert("content-type", "application/json".parse().unwrap());
    h.insert(
        http::HeaderName::from_bytes(format!("x-{KEY}").to_ascii_lowercase().as_bytes()).unwrap(),
        "1".parse().unwrap(),
    );
    s.scrub_headers(&mut h);
    assert_eq!(h.len(), 2);
    assert_eq!(h["x-debug"], "key=sk-…9f3a********");
    assert_eq!(h["content-type"], "application/json");
}

#[test]
fn a_value_or_name_as_long_as_the_shortest_secret_is_masked_and_a_shorter_one_kept() {
    let s = scrubber(&[OTHER, KEY]);
    let mut h = HeaderMap::new();
    h.insert("x-short", KEY.parse().unwrap());
    h.insert("x-long", OTHER.parse().unwrap());
    h.insert("x-shorter", KEY[..KEY.len() - 1].parse().unwrap());
    h.insert(
        http::HeaderName::from_bytes(KEY.to_ascii_lowercase().as_bytes()).unwrap(),
        "1".parse().unwrap(),
    );
    s.scrub_headers(&mut h);
    assert_eq!(h.len(), 3, "the header named by a key is dropped: {h:?}");
    assert_eq!(h["x-short"], "sk-…9f3a********");
    assert!(h["x-long"].as_bytes().starts_with("sk-…".as_bytes()));
    assert_eq!(h["x-long"].len(), OTHER.len());
    assert_eq!(h["x-shorter"], &KEY[..KEY.len() - 1]);
    // A whole body as short as the shortest secret is scanned too; a chunk shorter than it that
    // may start one is still held back until the stream ends.
    assert_eq!(
        s.scrub_whole(Bytes::from_static(KEY.as_bytes())).len(),
        KEY.len()
    );
    assert_ne!(
        &s.scrub_whole(Bytes::from_static(KEY.as_bytes()))[..],
        KEY.as_bytes()
    );
    assert_eq!(
        streamed(&s, &[b"sk-abc", b"defghijk9f3a"]),
        s.scrub_whole(Bytes::from_static(KEY.as_bytes())).to_vec()
    );
}

#[test]
fn headers_without_a_key_stay_as_they_were_repeated_values_in_order() {
    let s = scrubber(&[KEY]);
    let mut h = HeaderMap::new();
    h.append("set-cookie", "a=1".parse().unwrap());
    h.insert("content-type", "application/json".parse().unwrap());
    h.append("set-cookie", "b=2".parse().unwrap());
    h.insert("x-near-miss", KEY[..KEY.len() - 1].parse().unwrap());
    let before = h.clone();
    s.scrub_headers(&mut h);
    assert_eq!(h, before);
    let cookies: Vec<_> = h.get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["a=1", "b=2"]);
}

#[test]
fn a_pool_without_keys_changes_nothing() {
    let s = scrubber(&[]);
    let body = Bytes::from_static(b"anything \\u0041");
    assert_eq!(s.scrub_whole(body.clone()), body);
    assert_eq!(streamed(&s, &[b"a\\", b"u0041"]), b"a\\u0041");
}

/// Not a timed assertion: prints what scrubbing costs, for the README's figures. Run with
/// `cargo test --release --lib scrub::tests::cost -- --ignored --nocapture`.
#[test]
#[ignore]
fn cost() {
    let secrets: Vec<Secret> = (0..10_000)
        .map(|i| Secret::new(format!("sk-proj-{i:08}{}", "x".repeat(40))))
        .collect();
    let built = std::time::Instant::now();
    let s = Arc::new(Scrubber::new(&secrets));
    println!(
        "10,000 keys: built in {:?}, automaton {} bytes",
        built.elapsed(),
        s.automaton_bytes()
    );
    let event = "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" word\"}}]}\n\n";
    let json = format!(
        "{{\"choices\":[{{\"message\":{{\"content\":\"{}\"}}}}]}}",
        "lorem ipsum ".repeat(1300)
    );
    let escaped = format!("{{\"content\":\"{}\"}}", "caf\\u00e9 ".repeat(1600));
    for (what, chunk) in [
        ("SSE event", event.to_string()),
        ("16 KB JSON", json),
        ("16 KB with escapes", escaped),
    ] {
        let chunk = Bytes::from(chunk);
        let mut stream = StreamScrub::new(s.clone());
        let rounds = 20_000;
        let t = std::time::Instant::now();
        for _ in 0..rounds {
            std::hint::black_box(stream.feed(chunk.clone()));
        }
        let per = t.elapsed() / rounds;
        println!("{what} ({} bytes): {per:?} per chunk", chunk.len());
    }
}
