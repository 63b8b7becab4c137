//! Reading a Prometheus text exposition (what `GET /metrics` answers) into samples, so tests
//! can ask for a metric by name and labels. Only the subset the `prometheus` crate writes:
//! `# HELP`/`# TYPE` lines and `name{label="value",...} number` samples.

use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    /// Whether every `(label, value)` of `wanted` is on this sample.
    pub fn has(&self, wanted: &[(&str, &str)]) -> bool {
        wanted
            .iter()
            .all(|(k, v)| self.labels.get(*k).map(String::as_str) == Some(*v))
    }

    pub fn label_names(&self) -> BTreeSet<&str> {
        self.labels.keys().map(String::as_str).collect()
    }
}

#[derive(Debug, Clone)]
pub struct Exposition {
    pub text: String,
    pub samples: Vec<Sample>,
    /// Metric family → its `# TYPE` (counter, gauge, histogram...).
    pub types: BTreeMap<String, String>,
}

impl Exposition {
    pub fn parse(text: &str) -> Exposition {
        let mut samples = Vec::new();
        let mut types = BTreeMap::new();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split_whitespace();
                if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                    types.insert(name.to_string(), kind.to_string());
                }
            } else if !line.starts_with('#') {
                samples.push(
                    parse_sample(line)
                        .unwrap_or_else(|| panic!("unreadable exposition line: {line:?}")),
                );
            }
        }
        Exposition {
            text: text.to_string(),
            samples,
            types,
        }
    }

    /// GETs `url` (a `/metrics`) and reads it.
    pub async fn scrape(client: &reqwest::Client, url: &str) -> Exposition {
        let resp = client.get(url).send().await.expect("GET /metrics");
        assert_eq!(resp.status(), 200, "GET {url}");
        Exposition::parse(&resp.text().await.expect("/metrics body"))
    }

    /// Samples of `name` carrying every label of `wanted`.
    pub fn find<'a>(
        &'a self,
        name: &'a str,
        wanted: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples
            .iter()
            .filter(move |s| s.name == name && s.has(wanted))
    }

    /// The value of the one sample of `name` with `wanted`, if there is one.
    pub fn value(&self, name: &str, wanted: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<&Sample> = self.find(name, wanted).collect();
        assert!(
            found.len() <= 1,
            "{name}{wanted:?} matches several samples: {found:?}"
        );
        found.first().map(|s| s.value)
    }

    /// The sum over every sample of `name` with `wanted`.
    pub fn sum(&self, name: &str, wanted: &[(&str, &str)]) -> f64 {
        self.find(name, wanted).map(|s| s.value).sum()
    }

    /// The metric families with a `# TYPE` line.
    pub fn families(&self) -> BTreeSet<&str> {
        self.types.keys().map(String::as_str).collect()
    }
}

/// `name{a="x",b="y"} value [timestamp]`.
fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' ', '\t'])?;
    let name = line[..name_end].to_string();
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        rest = parse_labels(after_brace, &mut labels)?;
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// Reads `a="x",b="y"}` into `labels`; returns what follows the `}`.
fn parse_labels<'a>(mut rest: &'a str, labels: &mut BTreeMap<String, String>) -> Option<&'a str> {
    loop {
        rest = rest.trim_start_matches([',', ' ']);
        if let Some(after) = rest.strip_prefix('}') {
            return Some(after);
        }
        let eq = rest.find('=')?;
        let label = rest[..eq].trim().to_string();
        rest = rest[eq + 1..].strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        labels.insert(label, value);
        rest = &rest[end + 1..];
    }
}
