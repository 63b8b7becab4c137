//! What the deploy files query: the expressions of the Grafana dashboard and of the alert
//! rules, and just enough PromQL reading to find the metric selectors in them: identifiers
//! starting with `keygate_` outside string literals, and the label matchers in the braces that
//! follow them.

use std::path::Path;

/// `(where, expr)` for every `targets[].expr` of the dashboard, at any depth (rows nest
/// panels), and the template variables' queries.
pub fn dashboard_queries() -> Vec<(String, String)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/dashboards/keygate.json");
    let text = std::fs::read_to_string(&path).expect("read the dashboard");
    let json: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
    let mut out = Vec::new();
    collect_targets(&json, "dashboard", &mut out);
    let variables = json["templating"]["list"].as_array().cloned();
    for v in variables.unwrap_or_default() {
        let query = v["query"]["query"].as_str().or(v["query"].as_str());
        if let Some(q) = query {
            out.push((format!("dashboard variable {}", v["name"]), q.to_string()));
        }
    }
    out
}

fn collect_targets(v: &serde_json::Value, panel: &str, out: &mut Vec<(String, String)>) {
    match v {
        serde_json::Value::Object(map) => {
            let title = map.get("title").and_then(|t| t.as_str()).unwrap_or(panel);
            let here = format!("dashboard panel {title:?}");
            if let Some(targets) = map.get("targets").and_then(|t| t.as_array()) {
                for t in targets {
                    if let Some(expr) = t["expr"].as_str() {
                        out.push((here.clone(), expr.to_string()));
                    }
                }
            }
            for (k, child) in map {
                if k != "targets" {
                    collect_targets(child, title, out);
                }
            }
        }
        serde_json::Value::Array(items) => {
            for i in items {
                collect_targets(i, panel, out);
            }
        }
        _ => {}
    }
}

/// Every `expr:` of `deploy/alerts.yml`, read as text (no YAML parser among the dependencies):
/// the value after `expr:`, or for a block scalar (`|`, `>`) or a continued plain scalar the
/// lines indented deeper than the `expr:` line.
pub fn alert_queries() -> Vec<(String, String)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/alerts.yml");
    let text = std::fs::read_to_string(&path).expect("read the alert rules");
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut alert = String::from("?");
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start().trim_start_matches("- ");
        if let Some(name) = trimmed.strip_prefix("alert:") {
            alert = name.trim().to_string();
        }
        let Some(value) = trimmed.strip_prefix("expr:") else {
            continue;
        };
        let indent = line.len() - line.trim_start().len();
        let mut expr = String::new();
        let value = value.trim();
        if !value.starts_with(['|', '>']) {
            expr.push_str(value.trim_matches(['"', '\'']));
        }
        for next in &lines[i + 1..] {
            let deeper = next.len() - next.trim_start().len() > indent;
            if !next.trim().is_empty() && !deeper {
                break;
            }
            expr.push(' ');
            expr.push_str(next.trim());
        }
        out.push((format!("alert {alert}"), expr.trim().to_string()));
    }
    out
}

#[derive(Debug)]
pub struct Matcher {
    pub label: String,
    pub op: String,
    pub value: String,
}

#[derive(Debug)]
pub struct Selector {
    pub metric: String,
    pub matchers: Vec<Matcher>,
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident(c: char) -> bool {
    is_ident_start(c) || c.is_ascii_digit()
}

fn skip_space(chars: &[char], mut i: usize) -> usize {
    while i < chars.len() && chars[i].is_whitespace() {
        i += 1;
    }
    i
}

/// Reads the string literal opening at `chars[i]`; returns its text and the index after it.
fn quoted(chars: &[char], i: usize) -> (String, usize) {
    let quote = chars[i];
    let mut text = String::new();
    let mut j = i + 1;
    while j < chars.len() && chars[j] != quote {
        if chars[j] == '\\' && quote != '`' && j + 1 < chars.len() {
            j += 1;
        }
        text.push(chars[j]);
        j += 1;
    }
    (text, j + 1)
}

fn ident(chars: &[char], mut i: usize) -> (String, usize) {
    let start = i;
    while i < chars.len() && is_ident(chars[i]) {
        i += 1;
    }
    (chars[start..i].iter().collect(), i)
}

/// Reads `label op "value", ...}` from just after a `{`; returns the index after the `}`.
fn matchers(chars: &[char], mut i: usize, out: &mut Vec<Matcher>) -> usize {
    loop {
        while i < chars.len() && (chars[i].is_whitespace() || chars[i] == ',') {
            i += 1;
        }
        if i >= chars.len() || chars[i] == '}' {
            return i + 1;
        }
        let (label, next) = ident(chars, i);
        i = skip_space(chars, next);
        let op_start = i;
        while i < chars.len() && "=!~".contains(chars[i]) {
            i += 1;
        }
        let op: String = chars[op_start..i].iter().collect();
        i = skip_space(chars, i);
        assert!(
            !label.is_empty() && !op.is_empty() && i < chars.len(),
            "unreadable label matcher in {:?}",
            chars.iter().collect::<String>()
        );
        let (value, next) = quoted(chars, i);
        i = next;
        out.push(Matcher { label, op, value });
    }
}

pub fn selectors(expr: &str) -> Vec<Selector> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if matches!(c, '"' | '\'' | '`') {
            i = quoted(&chars, i).1;
        } else if is_ident_start(c) {
            let (word, next) = ident(&chars, i);
            i = next;
            if word.starts_with("keygate_") {
                let mut sel = Selector {
                    metric: word,
                    matchers: Vec::new(),
                };
                let j = skip_space(&chars, i);
                if j < chars.len() && chars[j] == '{' {
                    i = matchers(&chars, j + 1, &mut sel.matchers);
                }
                out.push(sel);
            }
        } else {
            i += 1;
        }
    }
    out
}
