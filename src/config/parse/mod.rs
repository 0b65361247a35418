//! TOML text → file mirror, reporting every unknown key and ill-typed value at once.
//!
//! serde stops at the first key it cannot take. So the text is parsed once into toml's spanned
//! document tree, and deserialisation is retried on that tree: each failure is located in the
//! tree by its span (which gives the exact key path, e.g. `route[0].backends[1]`), reported in
//! the config's words, and the offending entry is taken out before the next try. What is left
//! deserialises, and validation can still report value errors in it. Nothing here knows the
//! schema: keys and types come from serde's errors and from the tree.

use std::ops::Range;

use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::ConfigError;
use words::{describe, scrub};

mod homes;
mod words;

/// A file with more mistakes than this is reported up to here only.
const MAX_ERRORS: usize = 100;

/// The outcome of [`parse`]: the mirror that remains, and what was wrong.
#[derive(Debug)]
pub(crate) struct Parsed<T> {
    /// The mirror once every offending entry is taken out; `None` when the text is not TOML
    /// (one syntax error) or an error could not be placed in the document.
    pub file: Option<T>,
    /// Syntax, unknown-key and type errors, in file order.
    pub errors: Vec<ConfigError>,
    /// Key paths of the entries taken out, e.g. `route[0].bakends`, `listener`.
    pub taken_out: Vec<String>,
    /// For a misspelt key (`route[0].bakends`), the absent key it was meant to be
    /// (`route[0].backends`): a "missing" error for that one would say the same again.
    meant: Vec<String>,
}

impl<T> Parsed<T> {
    /// Whether an error for `key` (e.g. a validation error saying it is missing) would repeat
    /// one already reported: `key` is at or under a taken-out or meant-to-be key.
    pub fn already_reported(&self, key: &str) -> bool {
        self.taken_out.iter().chain(&self.meant).any(|c| {
            key.strip_prefix(c.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
        })
    }
}

/// Parses `text` into `T`, collecting every error serde can be made to report. A syntax error
/// is the only error: the text has no document structure to go on.
pub(crate) fn parse<T: DeserializeOwned>(text: &str) -> Parsed<T> {
    let mut out = Parsed {
        file: None,
        errors: Vec::new(),
        taken_out: Vec::new(),
        meant: Vec::new(),
    };
    let mut work = match DeTable::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            out.errors
                .push(parse_error(text, &e, e.message().trim().to_string()));
            return out;
        }
    };
    let mut result = deserialize::<T>(&work);
    // The tables and their keys, for an unknown key's home: mapped when first needed.
    let schema = std::cell::OnceCell::new();
    // Every round takes something out, so this ends anyway; the bound is for pathological text.
    for _round in 0..2 * MAX_ERRORS {
        let e = match result {
            Ok(file) => {
                out.file = Some(file);
                break;
            }
            Err(e) => e,
        };
        if out.errors.len() >= MAX_ERRORS {
            out.errors.push(ConfigError {
                key: "(file)".into(),
                line: None,
                message: format!("more errors; stopped after {MAX_ERRORS}"),
            });
            break;
        }
        let Some(hit) = e.span().and_then(|span| locate(&work, span, &e)) else {
            // Not placeable in the tree: reported as it comes, and nothing is left to validate.
            out.errors.push(parse_error(text, &e, scrub(e.message())));
            break;
        };
        let hit = refine::<T>(&mut work, hit, &e);
        let key = key_path(&hit.path);
        let homes = |key: &str, here: &[&str]| {
            homes::homes(schema.get_or_init(homes::schema::<T>), key, here)
        };
        let (message, meant) = describe(text, &mut work, &hit, e.message(), homes);
        out.meant.extend(meant);
        if !out
            .errors
            .iter()
            .any(|x| x.key == key && x.message == message)
        {
            out.errors.push(ConfigError {
                key,
                line: Some(line_of(text, hit.span.start)),
                message,
            });
        }
        let Some((taken, next)) = take_out::<T>(&mut work, &hit) else {
            break;
        };
        out.taken_out.push(taken);
        result = next;
    }
    out.errors.sort_by_key(|e| e.line.unwrap_or(0));
    out
}

fn deserialize<T: DeserializeOwned>(doc: &Spanned<DeTable<'_>>) -> Result<T, toml::de::Error> {
    T::deserialize(toml::de::Deserializer::from(doc.clone()))
}

/// One step of a key path: a table key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

/// Where in the document an error is.
#[derive(Debug)]
struct Hit {
    /// From the root to the offending entry (a key) or array element (an index).
    path: Vec<Step>,
    span: Range<usize>,
    /// What the key takes instead, when a probe found out.
    takes: Takes,
}

/// The shape a key takes, as found by trying it ([`refine`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Takes {
    Unknown,
    /// A single table (written `[[x]]` or as an array).
    Table,
    /// An array of tables (written as a single `[x]`).
    ArrayOfTables,
}

/// The entry or element whose key or value has exactly the error's span. Several can share
/// a span (`[[timeouts]]` is both the array and its first table): the kind of value the
/// message says it found decides, else the deepest.
fn locate(doc: &Spanned<DeTable<'_>>, span: Range<usize>, e: &toml::de::Error) -> Option<Hit> {
    fn walk_table(
        t: &DeTable<'_>,
        span: &Range<usize>,
        path: &mut Vec<Step>,
        hits: &mut Vec<(Vec<Step>, bool, &'static str)>,
    ) {
        for (k, v) in t.iter() {
            path.push(Step::Key(k.get_ref().to_string()));
            if k.span() == *span {
                hits.push((path.clone(), true, ""));
            }
            walk_value(v, span, path, hits);
            path.pop();
        }
    }
    fn walk_value(
        v: &Spanned<DeValue<'_>>,
        span: &Range<usize>,
        path: &mut Vec<Step>,
        hits: &mut Vec<(Vec<Step>, bool, &'static str)>,
    ) {
        if v.span() == *span {
            hits.push((path.clone(), false, serde_kind(v.get_ref())));
        }
        match v.get_ref() {
            DeValue::Table(t) => walk_table(t, span, path, hits),
            DeValue::Array(a) => {
                for (i, item) in a.iter().enumerate() {
                    path.push(Step::Index(i));
                    walk_value(item, span, path, hits);
                    path.pop();
                }
            }
            _ => {}
        }
    }
    let mut hits = Vec::new();
    walk_table(doc.get_ref(), &span, &mut Vec::new(), &mut hits);
    let found = e
        .message()
        .strip_prefix("invalid type: ")
        .or_else(|| e.message().strip_prefix("invalid value: "))
        .map(|m| m.split([' ', ',']).next().unwrap_or(""));
    let best = |hits: &mut dyn Iterator<Item = &(Vec<Step>, bool, &'static str)>| {
        hits.max_by_key(|h| h.0.len()).cloned()
    };
    // An unknown key's error has the key's span; a wrong value's, the value's.
    let (path, _, _) = best(&mut hits.iter().filter(|h| h.1))
        .or_else(|| best(&mut hits.iter().filter(|h| Some(h.2) == found)))
        .or_else(|| best(&mut hits.iter()))?;
    Some(Hit {
        path,
        span,
        takes: Takes::Unknown,
    })
}

/// The first word serde uses for a value of this kind in "invalid type: ..." (a date-time is
/// handed to serde as a map).
fn serde_kind(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "string",
        DeValue::Integer(_) => "integer",
        DeValue::Float(_) => "floating",
        DeValue::Boolean(_) => "boolean",
        DeValue::Datetime(_) | DeValue::Table(_) => "map",
        DeValue::Array(_) => "sequence",
    }
}

fn key_path(path: &[Step]) -> String {
    let mut out = String::new();
    for step in path {
        match step {
            Step::Key(k) if out.is_empty() => out.push_str(k),
            Step::Key(k) => {
                out.push('.');
                out.push_str(k);
            }
            Step::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    if out.is_empty() {
        out.push_str("(top level)");
    }
    out
}

/// Probes that make a hit more precise, each a deserialisation of a changed copy:
/// - an array where the key takes a table: serde reads a struct from an array too, field by
///   field, so `[[timeouts]]` fails on its first table "expected a string";
/// - a table where the key takes an array of tables (`[listener]` for `[[listener]]`);
/// - an error on a whole array that is about one of its elements (an untagged enum's error
///   has no span of its own, so it gets the array's): the shortest failing prefix ends there.
fn refine<T: DeserializeOwned>(
    doc: &mut Spanned<DeTable<'_>>,
    mut hit: Hit,
    e: &toml::de::Error,
) -> Hit {
    let Some(node) = value_at(doc.get_mut(), &hit.path).map(|v| v.clone()) else {
        return hit;
    };
    if node.span() != hit.span {
        // An unknown key: its span is the key's, and what it holds does not matter.
        return hit;
    }
    let node = node.into_inner();
    let array_path = match (&node, hit.path.last()) {
        (DeValue::Array(_), _) => hit.path.clone(),
        (_, Some(Step::Index(_))) => hit.path[..hit.path.len() - 1].to_vec(),
        (DeValue::Table(_), Some(Step::Key(_))) => {
            let span = hit.span.clone();
            let mut wrapped = toml::de::DeArray::new();
            wrapped.push(Spanned::new(span.clone(), node));
            if fails_at::<T>(doc, &hit.path, DeValue::Array(wrapped), &span) == Some(false) {
                hit.takes = Takes::ArrayOfTables;
            }
            return hit;
        }
        _ => return hit,
    };
    let Some(original) = value_at(doc.get_mut(), &array_path).map(|v| v.clone()) else {
        return hit;
    };
    let span = original.span();
    if fails_at::<T>(doc, &array_path, DeValue::Table(DeTable::new()), &span) == Some(false) {
        return Hit {
            path: array_path,
            span,
            takes: Takes::Table,
        };
    }
    if hit.span == span {
        // The first table of a `[[x]]` array has the array's span: no telling them apart yet.
        hit.path = array_path.clone();
    }
    let about_the_array = ["invalid type: sequence", "invalid length"]
        .iter()
        .any(|p| e.message().starts_with(p));
    if let DeValue::Array(items) = original.get_ref()
        && hit.path == array_path
        && !about_the_array
    {
        let culprit = (0..items.len()).find(|&k| {
            let mut prefix = toml::de::DeArray::new();
            for item in &items[..=k] {
                prefix.push(item.clone());
            }
            try_with::<T>(doc, &array_path, DeValue::Array(prefix)).is_some_and(|r| {
                r.err().is_some_and(|e2| {
                    e2.span() == Some(span.clone()) && e2.message() == e.message()
                })
            })
        });
        if let Some(k) = culprit {
            hit.path.push(Step::Index(k));
            hit.span = items[k].span();
        }
    }
    hit
}

/// Deserialises with the value at `path` replaced by `value` (same span), then puts the
/// original back. `None` if there is no value at `path`.
fn try_with<'i, T: DeserializeOwned>(
    doc: &mut Spanned<DeTable<'i>>,
    path: &[Step],
    value: DeValue<'i>,
) -> Option<Next<T>> {
    let slot = value_at(doc.get_mut(), path)?;
    let span = slot.span();
    let original = std::mem::replace(slot, Spanned::new(span, value));
    let result = deserialize::<T>(doc);
    *value_at(doc.get_mut(), path)? = original;
    Some(result)
}

/// Whether deserialising with `value` at `path` still fails at `span`.
fn fails_at<'i, T: DeserializeOwned>(
    doc: &mut Spanned<DeTable<'i>>,
    path: &[Step],
    value: DeValue<'i>,
    span: &Range<usize>,
) -> Option<bool> {
    let result = try_with::<T>(doc, path, value)?;
    Some(result.err().and_then(|e| e.span()).as_ref() == Some(span))
}

fn table_at<'a, 'i>(doc: &'a mut DeTable<'i>, path: &[Step]) -> Option<&'a mut DeTable<'i>> {
    match path.split_last() {
        None => Some(doc),
        Some(_) => match value_at(doc, path)?.get_mut() {
            DeValue::Table(t) => Some(t),
            _ => None,
        },
    }
}

fn value_at<'a, 'i>(
    doc: &'a mut DeTable<'i>,
    path: &[Step],
) -> Option<&'a mut Spanned<DeValue<'i>>> {
    let (Step::Key(first), rest) = path.split_first()? else {
        return None;
    };
    let mut v = doc.get_mut(first.as_str())?;
    for step in rest {
        v = match (v.get_mut(), step) {
            (DeValue::Table(t), Step::Key(k)) => t.get_mut(k.as_str())?,
            (DeValue::Array(a), Step::Index(i)) => a.get_mut(*i)?,
            _ => return None,
        };
    }
    Some(v)
}

type Next<T> = Result<T, toml::de::Error>;

/// Takes the offending entry out of `doc` and deserialises again. A table entry is removed.
/// An array element cannot be removed without renumbering the ones after it (validation
/// names them by index), so it is replaced by the first of a few plain values that gets
/// past it; failing that, the whole array goes. Returns the key path taken out and the
/// next result, or `None` if nothing could be taken out.
fn take_out<T: DeserializeOwned>(
    doc: &mut Spanned<DeTable<'_>>,
    hit: &Hit,
) -> Option<(String, Next<T>)> {
    let mut path = hit.path.clone();
    if let Some((&Step::Index(k), array_path)) = path.split_last() {
        let array = value_at(doc.get_mut(), array_path)?.clone();
        let DeValue::Array(items) = array.get_ref() else {
            return None;
        };
        let spans = [array.span(), items.get(k)?.span()];
        for stand_in in ["{}", "\"\"", "false", "0", "[]"] {
            let value = DeValue::parse(stand_in).ok()?.into_inner();
            let value = Spanned::new(spans[1].clone(), value);
            // Judged on the array up to this element: a later bad element fails at the
            // array's span too (an array of tables shares its span with its first table).
            let mut prefix = toml::de::DeArray::new();
            for item in &items[..k] {
                prefix.push(item.clone());
            }
            prefix.push(value.clone());
            let fails = try_with::<T>(doc, array_path, DeValue::Array(prefix))?
                .err()
                .and_then(|e| e.span())
                .is_some_and(|s| spans.contains(&s));
            if !fails {
                *value_at(doc.get_mut(), &path)? = value;
                return Some((key_path(&path), deserialize::<T>(doc)));
            }
        }
        // No plain value gets past it: the whole array goes (the nearest key above).
        while let Some(Step::Index(_)) = path.last() {
            path.pop();
        }
    }
    let Some((Step::Key(k), parent)) = path.split_last() else {
        return None;
    };
    table_at(doc.get_mut(), parent)?.remove(k.as_str())?;
    let next = deserialize::<T>(doc);
    Some((key_path(&path), next))
}

/// Turns a TOML syntax error (or one that cannot be placed in the document) into a
/// [`ConfigError`] with `message`, recovering the key path from the span by reading the text.
fn parse_error(text: &str, e: &toml::de::Error, message: String) -> ConfigError {
    match e.span() {
        Some(span) => ConfigError {
            key: key_path_at(text, span.clone()),
            line: Some(line_of(text, span.start)),
            // toml says "duplicate key" of a table header too (`[timeouts]` twice, or
            // `[[route.backends]]` after `backends = [...]`).
            message: if message == "duplicate key" && header_at(text, span.start).is_some() {
                "defined twice: a table's keys go under one header, and a name is a key or a \
                 table, not both"
                    .to_string()
            } else {
                message
            },
        },
        None => ConfigError {
            key: "(file)".into(),
            line: None,
            message,
        },
    }
}

/// 1-based line number of a byte offset.
pub(super) fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The table header on the line of `offset`, trimmed, if that line is one.
fn header_at(text: &str, offset: usize) -> Option<&str> {
    let start = text[..offset.min(text.len())]
        .rfind('\n')
        .map_or(0, |i| i + 1);
    let line = text[start..].split('\n').next().unwrap_or("").trim();
    line.starts_with('[').then_some(line)
}

/// The dotted path of the table a header line opens (`route[1]` for the second `[[route]]`,
/// `route[1].timeouts` for a `[route.timeouts]` after it), counting arrays of tables in
/// `counts`; `None` for a line that is no header.
fn table_header(t: &str, counts: &mut std::collections::HashMap<String, usize>) -> Option<String> {
    if let Some(name) = t.strip_prefix("[[").and_then(|r| r.split("]]").next()) {
        // `trim_end_matches`: a header with a `]` missing (`[[route]`, the syntax error
        // being reported) still names its table.
        let name = name.trim().trim_end_matches(']').trim().to_string();
        // An array of tables inside the current entry of another (`[[route.backends]]`).
        let (base, shown) = match name.split_once('.') {
            // Counted per entry of the parent: `route[1].backends` starts again at 0.
            Some((parent, child)) if counts.contains_key(parent) => {
                let shown = format!("{parent}[{}].{child}", counts[parent] - 1);
                (shown.clone(), shown)
            }
            _ => (name.clone(), name.clone()),
        };
        let n = counts.entry(base).or_insert(0);
        let path = format!("{shown}[{n}]");
        *n += 1;
        return Some(path);
    }
    let name = t.strip_prefix('[').and_then(|r| r.split(']').next())?;
    // A sub-table of the current array entry, e.g. `[route.timeouts]`.
    let name = name.trim();
    Some(match name.split_once('.') {
        Some((parent, child)) if counts.contains_key(parent) => {
            format!("{parent}[{}].{child}", counts[parent] - 1)
        }
        _ => name.to_string(),
    })
}

/// Best-effort dotted key for a span: the innermost table header before it (with the index of
/// an array-of-tables entry) followed by the key written on the span's line, if any.
fn key_path_at(text: &str, span: Range<usize>) -> String {
    let before = &text[..span.start.min(text.len())];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let mut table = String::new();
    let mut counts: std::collections::HashMap<String, usize> = Default::default();
    // The whole lines before the span's: a span inside a header (`timeouts` in
    // `[route.timeouts]`) must not count the header's first half as a table of its own.
    for line in text[..line_start].lines() {
        if let Some(t) = table_header(line.trim(), &mut counts) {
            table = t;
        }
    }
    // At a header (a table defined twice): that header's table.
    if let Some(header) = header_at(text, span.start) {
        return table_header(header, &mut counts).unwrap_or(table);
    }
    let line = &text[line_start..];
    let line = line.split('\n').next().unwrap_or("");
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim())
        .filter(|k| !k.is_empty() && !k.starts_with('['));
    match (table.is_empty(), key) {
        (true, Some(k)) => k.to_string(),
        (false, Some(k)) => format!("{table}.{k}"),
        (false, None) => table,
        (true, None) => "(top level)".into(),
    }
}

#[cfg(test)]
mod tests;
