//! A strict reader of the Prometheus text exposition format (0.0.4) and of OpenMetrics text,
//! for tests: every line must parse, every sample must belong to a family declared by a
//! `# TYPE` line, no series may appear twice, and histogram buckets must be cumulative.

use std::collections::{BTreeMap, HashMap, HashSet};

/// One sample: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed exposition.
#[derive(Debug, Default)]
pub struct Exposition {
    pub samples: Vec<Sample>,
    /// Family name → type.
    pub types: HashMap<String, String>,
}

impl Exposition {
    /// The value of the sample `name` whose labels include every pair of `labels`; 0 when
    /// there is none (a counter not yet incremented is absent). Panics if several match.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<&Sample> = self.matching(name, labels).collect();
        assert!(found.len() <= 1, "several {name}{labels:?}: {found:?}");
        found.first().map_or(0.0, |s| s.value)
    }

    /// The sum of every sample `name` with these labels.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }

    /// The samples `name` whose labels include every pair of `labels`.
    fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&str, &str)],
    ) -> impl Iterator<Item = &'a Sample> {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }
}

fn valid_name(n: &str) -> bool {
    let mut chars = n.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// The family a sample belongs to: its name without a type suffix.
fn family_of<'a>(name: &'a str, types: &HashMap<String, String>) -> Option<&'a str> {
    if types.contains_key(name) {
        return Some(name);
    }
    for suffix in ["_total", "_bucket", "_sum", "_count", "_created", "_info"] {
        if let Some(base) = name.strip_suffix(suffix)
            && types.contains_key(base)
        {
            return Some(base);
        }
    }
    None
}

fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    let mut rest = s;
    while !rest.is_empty() {
        let (key, after) = rest
            .split_once("=\"")
            .ok_or(format!("bad label in {s:?}"))?;
        if !valid_name(key) {
            return Err(format!("bad label name {key:?}"));
        }
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    other => return Err(format!("bad escape {other:?} in {s:?}")),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => return Err(format!("unterminated label value in {s:?}")),
            }
        };
        if labels.insert(key.to_string(), value).is_some() {
            return Err(format!("label {key} twice in {s:?}"));
        }
        rest = &after[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
    Ok(labels)
}

/// Parses an exposition; `Err` names the first problem.
pub fn parse(text: &str, openmetrics: bool) -> Result<Exposition, String> {
    let mut exp = Exposition::default();
    let mut seen = HashSet::new();
    let mut eof = false;
    for line in text.lines() {
        if eof {
            return Err(format!("line after # EOF: {line:?}"));
        }
        if line == "# EOF" {
            eof = true;
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').ok_or(format!("bad TYPE {line:?}"))?;
            let known = [
                "counter",
                "gauge",
                "histogram",
                "summary",
                "untyped",
                "info",
                "unknown",
            ];
            if !valid_name(name) || !known.contains(&kind) {
                return Err(format!("bad TYPE {line:?}"));
            }
            if exp
                .types
                .insert(name.to_string(), kind.to_string())
                .is_some()
            {
                return Err(format!("family {name} declared twice"));
            }
            continue;
        }
        if line.starts_with("# HELP ") || line.starts_with("# UNIT ") {
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            return Err(format!("stray line {line:?}"));
        }
        let (series, value) = line.rsplit_once(' ').ok_or(format!("no value: {line:?}"))?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().map_err(|_| format!("bad value in {line:?}"))?,
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (
                n,
                parse_labels(l.strip_suffix('}').ok_or(format!("bad labels: {line:?}"))?)?,
            ),
            None => (series, BTreeMap::new()),
        };
        if !valid_name(name) {
            return Err(format!("bad metric name {name:?}"));
        }
        if family_of(name, &exp.types).is_none() {
            return Err(format!("{name} has no # TYPE line"));
        }
        if !seen.insert(series.to_string()) {
            return Err(format!("series twice: {series}"));
        }
        exp.samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    if openmetrics && !eof {
        return Err("OpenMetrics text must end with # EOF".into());
    }
    check_histograms(&exp)?;
    Ok(exp)
}

/// Buckets rise with `le` and end with `+Inf`, equal to `_count`.
fn check_histograms(exp: &Exposition) -> Result<(), String> {
    type Series = (String, BTreeMap<String, String>);
    let mut series: BTreeMap<Series, Vec<(f64, f64)>> = BTreeMap::new();
    for s in &exp.samples {
        if let Some(base) = s.name.strip_suffix("_bucket") {
            let mut labels = s.labels.clone();
            let le = labels
                .remove("le")
                .ok_or(format!("bucket without le: {s:?}"))?;
            let le: f64 = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().map_err(|_| format!("bad le {le}"))?
            };
            series
                .entry((base.to_string(), labels))
                .or_default()
                .push((le, s.value));
        }
    }
    for ((base, labels), buckets) in series {
        for w in buckets.windows(2) {
            if w[1].0 <= w[0].0 || w[1].1 < w[0].1 {
                return Err(format!(
                    "{base}{labels:?}: buckets not cumulative: {buckets:?}"
                ));
            }
        }
        let last = buckets.last().ok_or("no buckets")?;
        let count = exp
            .samples
            .iter()
            .find(|s| s.name == format!("{base}_count") && s.labels == labels)
            .ok_or(format!("{base} has no _count"))?;
        if last.0 != f64::INFINITY || last.1 != count.value {
            return Err(format!(
                "{base}{labels:?}: +Inf bucket {last:?} != count {}",
                count.value
            ));
        }
    }
    Ok(())
}
