use super::*;

fn render(t: &KeyTable, chunk: usize) -> Vec<String> {
    Renderer::new(t.entries(), chunk).collect()
}

#[test]
fn histogram_buckets_are_cumulative_and_count_matches_inf() {
    let t = KeyTable::default();
    let s = t.get("p", "k1");
    s.observe(Duration::from_millis(3));
    s.observe(Duration::from_millis(30));
    s.observe(Duration::from_secs(100));
    let text = render(&t, 1 << 20).concat();
    let line = |le: &str| {
        let prefix = format!(
            "keygate_upstream_duration_seconds_bucket{{pool=\"p\",key=\"k1\",le=\"{le}\"}} "
        );
        let l = text.lines().find(|l| l.starts_with(&prefix)).unwrap();
        l[prefix.len()..].to_string()
    };
    assert_eq!(line("0.005"), "1");
    assert_eq!(line("0.025"), "1");
    assert_eq!(line("0.05"), "2");
    assert_eq!(line("60"), "2");
    assert_eq!(line("+Inf"), "3");
    assert!(text.contains("keygate_upstream_duration_seconds_count{pool=\"p\",key=\"k1\"} 3\n"));
    assert!(text.contains("keygate_upstream_duration_seconds_sum{pool=\"p\",key=\"k1\"} 100.033\n"));
}

#[test]
fn le_labels_are_the_bucket_bounds() {
    let written: Vec<String> = UPSTREAM_BUCKETS.iter().map(f64::to_string).collect();
    assert_eq!(written, UPSTREAM_LE);
}

#[test]
fn label_values_are_escaped() {
    let t = KeyTable::default();
    t.get("p", "k1").count_tokens("we\"ird\\mo\ndel", 1, 2);
    let text = render(&t, 1 << 20).concat();
    assert!(
        text.contains(
            r#"keygate_tokens_total{pool="p",key="k1",model="we\"ird\\mo\ndel",kind="prompt"} 1"#
        ),
        "{text}"
    );
}

#[test]
fn models_beyond_the_cap_count_as_other() {
    let t = KeyTable::default();
    let s = t.get("p", "k1");
    for i in 0..100 {
        s.count_tokens(&format!("m{i}"), 1, 1);
    }
    let text = render(&t, 1 << 20).concat();
    let models = text
        .lines()
        .filter(|l| l.starts_with("keygate_tokens_total{") && l.contains("kind=\"prompt\""))
        .count();
    assert_eq!(models, MODELS_PER_KEY);
    let other = format!(
        "keygate_tokens_total{{pool=\"p\",key=\"k1\",model=\"other\",kind=\"prompt\"}} {}",
        100 - (MODELS_PER_KEY - 1)
    );
    assert!(text.contains(&other), "{text}");
}

#[test]
fn chunked_rendering_equals_one_piece_and_keeps_families_together() {
    let t = KeyTable::default();
    for i in 0..300 {
        let s = t.get(if i % 2 == 0 { "a" } else { "b" }, &format!("k{i:03}"));
        s.count_request("stable", Outcome::Success);
        s.observe(Duration::from_millis(i));
        s.set_gauges(KeyState::Cooling, 1500, 3);
    }
    let whole = render(&t, usize::MAX).concat();
    let chunks = render(&t, 4096);
    assert!(chunks.len() > 10, "{} chunks", chunks.len());
    assert!(chunks.iter().all(|c| c.len() < 4096 + 2048));
    assert_eq!(chunks.concat(), whole);
    // Each family's header appears once, before all of its samples (with or without any).
    for (name, _, _) in FAMILIES.map(Family::header) {
        let headers = whole.matches(&format!("# TYPE {name} ")).count();
        assert_eq!(headers, 1, "{name}");
    }
    let state_lines: Vec<&str> = whole
        .lines()
        .filter(|l| l.starts_with("keygate_key_state{"))
        .collect();
    assert_eq!(state_lines.len(), 300 * 6);
    assert!(whole.contains("keygate_key_state{pool=\"a\",key=\"k000\",state=\"cooling\"} 1\n"));
    assert!(whole.contains("keygate_key_state{pool=\"a\",key=\"k000\",state=\"active\"} 0\n"));
    assert!(whole.contains("keygate_key_cooldown_seconds{pool=\"b\",key=\"k299\"} 1.5\n"));
}

#[test]
fn hidden_gauges_are_not_rendered_but_counters_stay() {
    let t = KeyTable::default();
    let s = t.get("p", "gone");
    s.count_request("stable", Outcome::RateLimited);
    s.count_cooldown(Outcome::RateLimited);
    s.set_gauges(KeyState::Active, 0, 1);
    s.hide_gauges();
    let text = render(&t, 1 << 20).concat();
    assert!(!text.contains("keygate_key_state{"), "{text}");
    assert!(!text.contains("keygate_key_weight{"), "{text}");
    assert!(text.contains(
        "keygate_requests_total{pool=\"p\",key=\"gone\",group=\"stable\",outcome=\"rate_limited\"} 1\n"
    ));
    assert!(text
        .contains("keygate_cooldowns_total{pool=\"p\",key=\"gone\",reason=\"rate_limited\"} 1\n"));
}

#[test]
fn retain_gauges_hides_only_the_refused_keys() {
    let t = KeyTable::default();
    for (pool, key) in [("a", "k1"), ("a", "k2"), ("b", "k1")] {
        t.get(pool, key).set_gauges(KeyState::Active, 0, 1);
    }
    t.retain_gauges(|pool, key| !(pool == "a" && key == "k2"));
    let text = render(&t, 1 << 20).concat();
    let weights: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("keygate_key_weight{"))
        .collect();
    assert_eq!(
        weights,
        [
            "keygate_key_weight{pool=\"a\",key=\"k1\"} 1",
            "keygate_key_weight{pool=\"b\",key=\"k1\"} 1"
        ]
    );
}

#[test]
fn an_empty_table_renders_every_family_header_and_no_sample() {
    let text = render(&KeyTable::default(), 1024).concat();
    for (name, kind, _) in FAMILIES.map(Family::header) {
        assert!(text.contains(&format!("# HELP {name} ")), "{text}");
        assert!(text.contains(&format!("# TYPE {name} {kind}\n")), "{text}");
    }
    assert!(text.lines().all(|l| l.starts_with('#')), "{text}");
}

#[test]
fn a_key_exports_every_cooldown_reason_at_zero_before_its_first() {
    let t = KeyTable::default();
    t.get("p", "k1").count_cooldown(Outcome::Timeout);
    let text = render(&t, 1 << 20).concat();
    for o in Outcome::ALL.into_iter().filter(|o| o.is_failure()) {
        let n = if o == Outcome::Timeout { 1 } else { 0 };
        let line = format!(
            "keygate_cooldowns_total{{pool=\"p\",key=\"k1\",reason=\"{}\"}} {n}\n",
            o.as_str()
        );
        assert!(text.contains(&line), "{line} in {text}");
    }
    assert!(!text.contains("reason=\"success\""), "{text}");
}

#[test]
fn a_key_with_one_group_and_one_model_holds_room_for_one_of_each() {
    let t = KeyTable::default();
    let s = t.get("p", "k1");
    for _ in 0..3 {
        s.count_request("stable", Outcome::Success);
        s.count_tokens("gpt-4.1-mini", 10, 5);
    }
    assert_eq!(s.requests.read().unwrap().capacity(), 1);
    assert_eq!(s.tokens.lock().unwrap().capacity(), 1);
    s.count_request("canary", Outcome::Success);
    s.count_tokens("gpt-4.1", 1, 1);
    assert_eq!(s.requests("stable", Outcome::Success), 3);
    assert_eq!(s.requests("canary", Outcome::Success), 1);
    assert_eq!(s.tokens.lock().unwrap().len(), 2);
}
