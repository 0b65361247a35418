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
        let (message, meant) = describe(text, &mut work, &hit, e.message());
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

/// The error's message in the config's words, and for a misspelt key the key path it was
/// probably meant to be when that key is absent (a "missing" error for it would repeat this).
fn describe(
    text: &str,
    doc: &mut Spanned<DeTable<'_>>,
    hit: &Hit,
    message: &str,
) -> (String, Option<String>) {
    let message = message.trim();
    if let Some(rest) = message.strip_prefix("unknown field ") {
        let (name, names) = backticked(rest);
        let suggestion = did_you_mean(&name, &names);
        let parent = &hit.path[..hit.path.len().saturating_sub(1)];
        let meant = suggestion.and_then(|s| {
            let absent = table_at(doc.get_mut(), parent).is_some_and(|t| !t.contains_key(s));
            let mut path = parent.to_vec();
            path.push(Step::Key(s.to_string()));
            absent.then(|| key_path(&path))
        });
        return (unknown("key", &name, &names), meant);
    }
    if let Some(rest) = message.strip_prefix("unknown variant ") {
        let (name, names) = backticked(rest);
        return (unknown("value", &name, &names), None);
    }
    if let Some(rest) = message.strip_prefix("missing field ") {
        return (format!("missing key \"{}\"", backticked(rest).0), None);
    }
    if let Some(rest) = message.strip_prefix("duplicate field ") {
        return (format!("duplicate key \"{}\"", backticked(rest).0), None);
    }
    let node = value_at(doc.get_mut(), &hit.path).map(|v| v.get_ref().clone());
    let snippet = text.get(hit.span.clone()).unwrap_or("");
    let found_plain = node.as_ref().map_or_else(
        || "something else".to_string(),
        |n| found(n, text, snippet, false),
    );
    let header = header_name(snippet).filter(|(_, array)| match &node {
        // `[[a]]` is a header when it holds tables, `[[1]]` is an array in an array.
        Some(DeValue::Array(items)) => {
            *array
                && items
                    .iter()
                    .all(|i| matches!(i.get_ref(), DeValue::Table(_)))
        }
        Some(DeValue::Table(_)) => !*array,
        _ => false,
    });
    match (hit.takes, header) {
        (Takes::ArrayOfTables, Some((name, false))) => {
            let m = format!(
                "expected an array of tables, found a single table: write [[{name}]], not [{name}]"
            );
            return (m, None);
        }
        (Takes::ArrayOfTables, _) => {
            return (
                format!("expected an array of tables, found {found_plain}"),
                None,
            );
        }
        (Takes::Table, Some((name, true))) => {
            let m = format!(
                "expected a single table, found an array of tables: write [{name}], not [[{name}]]"
            );
            return (m, None);
        }
        (Takes::Table, _) => return (table_expected(&hit.path, &found_plain), None),
        (Takes::Unknown, _) => {}
    }
    if let Some(rest) = message
        .strip_prefix("invalid type: ")
        .or_else(|| message.strip_prefix("invalid value: "))
        && let Some(at) = rest.rfind(", expected ")
    {
        let expected = expected(&rest[at + ", expected ".len()..]);
        let message = if message.starts_with("invalid value: ") {
            format!("expected {expected}, found {snippet}")
        } else if matches!(node, Some(DeValue::Integer(_))) && expected.ends_with("integer") {
            // An integer too large for any integer type serde has.
            format!("{snippet} is out of range")
        } else if expected == "a table" {
            table_expected(&hit.path, &found_plain)
        } else {
            format!("expected {expected}, found {found_plain}")
        };
        return (message, None);
    }
    if let Some(name) = message.strip_prefix("data did not match any variant of untagged enum ") {
        let forms = UNTAGGED_FORMS
            .iter()
            .find(|(n, _)| *n == name.trim())
            .map_or("one of the forms this key takes", |(_, forms)| forms);
        let found = node
            .as_ref()
            .map_or(found_plain, |n| found(n, text, snippet, true));
        return (format!("expected {forms}, found {found}"), None);
    }
    if let Some(rest) = message.strip_prefix("invalid length ")
        && let Some((n, exp)) = rest.split_once(", expected ")
    {
        return (
            format!("expected {}, found {n} entries", expected(exp)),
            None,
        );
    }
    (scrub(message), None)
}

/// "expected a table", with the two ways to write one at this key.
fn table_expected(path: &[Step], found: &str) -> String {
    let Some(Step::Key(k)) = path.last() else {
        return format!("expected a table, found {found}");
    };
    let section: Vec<&str> = path
        .iter()
        .filter_map(|s| match s {
            Step::Key(k) => Some(k.as_str()),
            Step::Index(_) => None,
        })
        .collect();
    format!(
        "expected a table ([{}] or {k} = {{ ... }}), found {found}",
        section.join(".")
    )
}

/// What untagged enums of the file mirror accept, by type name: serde's own message for them
/// ("data did not match any variant of untagged enum ...") says neither.
const UNTAGGED_FORMS: &[(&str, &str)] = &[(
    "FileBackend",
    "a URL or a table { url = ..., insecure_skip_verify = ... }",
)];

/// `unknown key "bakends"; did you mean "backends"?`, or the keys there are.
fn unknown(what: &str, name: &str, names: &[String]) -> String {
    match did_you_mean(name, names) {
        Some(s) => format!("unknown {what} \"{name}\"; did you mean \"{s}\"?"),
        None if names.is_empty() => format!("unknown {what} \"{name}\": none are allowed here"),
        None => format!(
            "unknown {what} \"{name}\"; expected one of: {}",
            names.join(", ")
        ),
    }
}

/// The first `quoted` name in a serde message, and the ones after it.
fn backticked(s: &str) -> (String, Vec<String>) {
    let mut parts = s.split('`').skip(1).step_by(2).map(str::to_string);
    let first = parts.next().unwrap_or_default();
    (first, parts.collect())
}

/// The closest of `names` to `name`, if close enough to be a slip: at most two edits (or a
/// third of the length, for long keys), and never a complete rewrite.
fn did_you_mean<'a>(name: &str, names: &'a [String]) -> Option<&'a str> {
    let typed = name.to_ascii_lowercase();
    names
        .iter()
        .map(|n| (edit_distance(&typed, &n.to_ascii_lowercase()), n))
        .filter(|(d, n)| *d <= 2.max(n.chars().count() / 3) && *d < typed.chars().count())
        .min_by_key(|(d, _)| *d)
        .map(|(_, n)| n.as_str())
}

/// Damerau–Levenshtein distance (optimal string alignment): insertions, deletions,
/// substitutions and swaps of two neighbours each count one.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
}

/// What was written, in TOML terms, with the text itself when it is short; with
/// `table_entries`, a table's entries too (`a table { url = 5 }`), for a value that may be
/// written in several forms.
fn found(v: &DeValue<'_>, text: &str, snippet: &str, table_entries: bool) -> String {
    let short = |s: &str| s.len() <= 40 && !s.contains('\n') && !s.is_empty();
    let shown = |what: &str| {
        if short(snippet) {
            format!("{what} ({snippet})")
        } else {
            what.to_string()
        }
    };
    match v {
        DeValue::String(_) => shown("a string"),
        DeValue::Integer(_) => shown("an integer"),
        DeValue::Float(_) => shown("a decimal number"),
        DeValue::Boolean(_) => shown("a boolean"),
        DeValue::Datetime(_) => shown("a date-time"),
        DeValue::Array(items) => match header_name(snippet) {
            Some((name, true))
                if items
                    .iter()
                    .all(|i| matches!(i.get_ref(), DeValue::Table(_))) =>
            {
                format!("an array of tables ([[{name}]])")
            }
            _ => "an array".into(),
        },
        DeValue::Table(t) => {
            let what = match header_name(snippet) {
                Some((name, false)) => format!("a table ([{name}])"),
                _ => "a table".into(),
            };
            if !table_entries || t.is_empty() {
                return what;
            }
            let entries: Vec<String> = t
                .iter()
                .map(|(k, v)| match text.get(v.span()).filter(|s| short(s)) {
                    Some(value) => format!("{} = {value}", k.get_ref()),
                    None => format!("{} = ...", k.get_ref()),
                })
                .collect();
            format!("{what} {{ {} }}", entries.join(", "))
        }
    }
}

/// `[a.b]` → `("a.b", false)`, `[[a.b]]` → `("a.b", true)`: a value written as a table
/// header (its span is the header), rather than inline.
fn header_name(snippet: &str) -> Option<(&str, bool)> {
    let (inner, array) = match snippet
        .strip_prefix("[[")
        .and_then(|s| s.strip_suffix("]]"))
    {
        Some(inner) => (inner, true),
        None => (snippet.strip_prefix('[')?.strip_suffix(']')?, false),
    };
    let inner = inner.trim();
    let is_key = !inner.is_empty()
        && inner
            .chars()
            .all(|c| c.is_alphanumeric() || "_-.\"' ".contains(c));
    is_key.then_some((inner, array))
}

/// serde's "expected ..." in TOML terms.
fn expected(exp: &str) -> String {
    let exp = exp.trim();
    match exp {
        "a string" | "a borrowed string" | "string" => "a string".into(),
        "a boolean" | "bool" => "a boolean (true or false)".into(),
        "a character" | "char" => "a single character".into(),
        "a sequence" | "a seq" => "an array".into(),
        // serde_spanned's, when a date-time (handed over as a table) meets a spanned value.
        "a spanned value" => "a value of another type".into(),
        "a map" | "map" => "a table".into(),
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "an integer".into(),
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "a non-negative integer".into(),
        "f32" | "f64" => "a number".into(),
        _ if exp.starts_with("struct ") => "a table".into(),
        _ if exp.starts_with("tuple") || exp.starts_with("a tuple") => "an array".into(),
        _ if exp.starts_with("enum ") => "one of the values this key takes".into(),
        _ => scrub(exp),
    }
}

/// Rust and serde words in a message that has no better translation, replaced by TOML ones.
fn scrub(message: &str) -> String {
    let mut out = String::new();
    let mut skip_name = false;
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String, skip_name: &mut bool| {
        if word.is_empty() {
            return;
        }
        if std::mem::take(skip_name) {
            word.clear();
            // Drop the space that followed "struct"/"enum" before the name.
            if out.ends_with(' ') {
                out.pop();
            }
            return;
        }
        let w = match word.as_str() {
            "sequence" | "seq" => "array",
            "map" => "table",
            "field" => "key",
            "fields" => "keys",
            "variant" => "form",
            "variants" => "forms",
            "i8" | "i16" | "i32" | "i64" | "i128" | "isize" | "u8" | "u16" | "u32" | "u64"
            | "u128" | "usize" => "integer",
            "f32" | "f64" => "number",
            "struct" => {
                *skip_name = true;
                "table"
            }
            "enum" => {
                *skip_name = true;
                "value"
            }
            "untagged" => "",
            w => w,
        };
        out.push_str(w);
        word.clear();
    };
    for c in message.chars() {
        if c.is_alphanumeric() || c == '_' {
            word.push(c);
        } else {
            flush(&mut word, &mut out, &mut skip_name);
            match c {
                '`' => out.push('"'),
                ' ' if out.ends_with(' ') || out.is_empty() => {}
                c => out.push(c),
            }
        }
    }
    flush(&mut word, &mut out, &mut skip_name);
    out.trim().to_string()
}

/// Turns a TOML syntax error (or one that cannot be placed in the document) into a
/// [`ConfigError`] with `message`, recovering the key path from the span by reading the text.
fn parse_error(text: &str, e: &toml::de::Error, message: String) -> ConfigError {
    match e.span() {
        Some(span) => ConfigError {
            key: key_path_at(text, span.clone()),
            line: Some(line_of(text, span.start)),
            message,
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

/// Best-effort dotted key for a span: the innermost table header before it (with the index of
/// an array-of-tables entry) followed by the key written on the span's line, if any.
fn key_path_at(text: &str, span: Range<usize>) -> String {
    let before = &text[..span.start.min(text.len())];
    let mut table = String::new();
    let mut counts: std::collections::HashMap<String, usize> = Default::default();
    for line in before.lines() {
        let t = line.trim();
        if let Some(name) = t.strip_prefix("[[").and_then(|r| r.split("]]").next()) {
            let name = name.trim().to_string();
            let n = counts.entry(name.clone()).or_insert(0);
            table = format!("{name}[{n}]");
            *n += 1;
        } else if let Some(name) = t.strip_prefix('[').and_then(|r| r.split(']').next()) {
            // A sub-table of the current array entry, e.g. `[route.timeouts]`.
            let name = name.trim();
            table = match name.split_once('.') {
                Some((parent, child)) if counts.contains_key(parent) => {
                    format!("{parent}[{}].{child}", counts[parent] - 1)
                }
                _ => name.to_string(),
            };
        }
    }
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
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
mod tests {
    use super::*;
    use crate::config::file::FileConfig;

    /// (line, key, message) of every error `parse` reports for `text`, each message checked
    /// for Rust and serde words.
    fn errors(text: &str) -> Vec<(usize, String, String)> {
        let errors: Vec<_> = parse::<FileConfig>(text)
            .errors
            .into_iter()
            .map(|e| (e.line.unwrap_or(0), e.key, e.message))
            .collect();
        for (_, _, m) in &errors {
            assert_config_words(m);
        }
        errors
    }

    /// Asserts that `text` gives exactly these errors (line, key, message), in this order.
    #[track_caller]
    fn assert_errors(text: &str, expected: &[(usize, &str, &str)]) {
        let got = errors(text);
        let want: Vec<(usize, String, String)> = expected
            .iter()
            .map(|(l, k, m)| (*l, k.to_string(), m.to_string()))
            .collect();
        assert_eq!(got, want, "{text}");
    }

    /// No type names or serde terms: the reader wrote TOML, not Rust.
    #[track_caller]
    fn assert_config_words(message: &str) {
        const RUST: [&str; 24] = [
            "i8", "i16", "i32", "i64", "i128", "isize", "u8", "u16", "u32", "u64", "u128", "usize",
            "f32", "f64", "map", "sequence", "seq", "struct", "enum", "untagged", "variant",
            "field", "Option", "Spanned",
        ];
        for word in message.split(|c: char| !c.is_alphanumeric() && c != '_') {
            assert!(!RUST.contains(&word), "{word:?} in {message:?}");
        }
        assert!(!message.contains('`'), "{message:?}");
    }

    #[test]
    fn key_paths_from_spans() {
        let text = "[[listener]]\nlisten = \"x\"\n\n[[route]]\nname = \"a\"\n[[route]]\nname = \"b\"\nbogus = 1\n[route.timeouts]\nbackend_connect = 3\n";
        let at = |needle: &str| {
            let i = text.find(needle).unwrap();
            key_path_at(text, i..i + needle.len())
        };
        assert_eq!(at("bogus"), "route[1].bogus");
        assert_eq!(at("listen ="), "listener[0].listen");
        assert_eq!(at("backend_connect"), "route[1].timeouts.backend_connect");
    }

    #[test]
    fn every_unknown_key_is_reported_with_a_near_miss_or_the_keys_there_are() {
        let text = "\
[timeouts]
idel = \"5m\"
[[listener]]
listn = \"127.0.0.1:0\"
[listener.tls]
crt = \"a.pem\"
[[route]]
name = \"a\"
bakends = [\"ws://a\"]
frobnicate = 1
[route.timeouts]
ping_intervall = \"1s\"
";
        assert_errors(
            text,
            &[
                (
                    2,
                    "timeouts.idel",
                    "unknown key \"idel\"; did you mean \"idle\"?",
                ),
                (
                    4,
                    "listener[0].listn",
                    "unknown key \"listn\"; did you mean \"listen\"?",
                ),
                (
                    6,
                    "listener[0].tls.crt",
                    "unknown key \"crt\"; did you mean \"cert\"?",
                ),
                (
                    9,
                    "route[0].bakends",
                    "unknown key \"bakends\"; did you mean \"backends\"?",
                ),
                (
                    10,
                    "route[0].frobnicate",
                    "unknown key \"frobnicate\"; expected one of: name, host, path, backends, \
                     balance, preserve_host, max_message, timeouts, backend_tls, origins, \
                     missing_origin, subprotocols, require_subprotocol, auth",
                ),
                (
                    12,
                    "route[0].timeouts.ping_intervall",
                    "unknown key \"ping_intervall\"; did you mean \"ping_interval\"?",
                ),
            ],
        );
        let p = parse::<FileConfig>(text);
        let file = p.file.as_ref().expect("the rest deserialises");
        assert_eq!(
            file.route[0].get_ref().name.as_ref().unwrap().get_ref(),
            "a"
        );
        assert_eq!(
            p.taken_out,
            [
                "listener[0].listn",
                "listener[0].tls.crt",
                "route[0].bakends",
                "route[0].frobnicate",
                "route[0].timeouts.ping_intervall",
                "timeouts.idel",
            ]
        );
        // A misspelt key stands for the key it was meant to be, when that one is absent.
        assert!(p.already_reported("route[0].backends"));
        assert!(p.already_reported("route[0].bakends"));
        assert!(p.already_reported("listener[0].listen"));
        assert!(!p.already_reported("listener[0].listener"));
        assert!(!p.already_reported("route[0].name"));
        assert!(!p.already_reported("route[1].backends"));

        // A misspelt table or array of tables is an unknown key on its header's line.
        assert_errors(
            "[[route]]\nname = \"a\"\n[route.timeout]\nidle = \"1s\"\n[[route.tls]]\nx = 1\n",
            &[
                (
                    3,
                    "route[0].timeout",
                    "unknown key \"timeout\"; did you mean \"timeouts\"?",
                ),
                (
                    5,
                    "route[0].tls",
                    "unknown key \"tls\"; expected one of: name, host, path, backends, balance, \
                     preserve_host, max_message, timeouts, backend_tls, origins, missing_origin, \
                     subprotocols, require_subprotocol, auth",
                ),
            ],
        );

        // Present as well: its own errors are its own.
        let p = parse::<FileConfig>("[[route]]\nbackends = []\nbakends = []\n");
        assert!(!p.already_reported("route[0].backends"));
    }

    #[test]
    fn wrong_types_in_toml_words() {
        assert_errors(
            "[timeouts]\nhandshake = 10\nidle = true\nping_interval = 1.5\npong_timeout = 1979-05-27\n\
             max_lifetime = [\"1h\"]\n[limits]\nmax_headers = \"lots\"\n",
            &[
                (
                    2,
                    "timeouts.handshake",
                    "expected a string, found an integer (10)",
                ),
                (
                    3,
                    "timeouts.idle",
                    "expected a string, found a boolean (true)",
                ),
                (
                    4,
                    "timeouts.ping_interval",
                    "expected a string, found a decimal number (1.5)",
                ),
                (
                    5,
                    "timeouts.pong_timeout",
                    "expected a string, found a date-time (1979-05-27)",
                ),
                (
                    6,
                    "timeouts.max_lifetime",
                    "expected a string, found an array",
                ),
                (
                    8,
                    "limits.max_headers",
                    "expected an integer, found a string (\"lots\")",
                ),
            ],
        );
        assert_errors(
            "[[listener]]\nproxy_protocol = \"yes\"\ntrusted_proxies = \"10.0.0.0/8\"\n",
            &[
                (
                    2,
                    "listener[0].proxy_protocol",
                    "expected a boolean (true or false), found a string (\"yes\")",
                ),
                (
                    3,
                    "listener[0].trusted_proxies",
                    "expected an array, found a string (\"10.0.0.0/8\")",
                ),
            ],
        );
    }

    #[test]
    fn a_string_where_a_table_goes() {
        assert_errors(
            "[[listener]]\ntls = \"cert.pem\"\n[[route]]\ntimeouts = \"5s\"\n[route.auth]\njwt = 1\n",
            &[
                (
                    2,
                    "listener[0].tls",
                    "expected a table ([listener.tls] or tls = { ... }), found a string (\"cert.pem\")",
                ),
                (
                    4,
                    "route[0].timeouts",
                    "expected a table ([route.timeouts] or timeouts = { ... }), found a string (\"5s\")",
                ),
                (
                    6,
                    "route[0].auth.jwt",
                    "expected a table ([route.auth.jwt] or jwt = { ... }), found an integer (1)",
                ),
            ],
        );
    }

    #[test]
    fn single_tables_and_arrays_of_tables_mixed_up() {
        assert_errors(
            "[listener]\nlisten = \"127.0.0.1:0\"\n[route]\nname = \"a\"\n",
            &[
                (
                    1,
                    "listener",
                    "expected an array of tables, found a single table: write [[listener]], not [listener]",
                ),
                (
                    3,
                    "route",
                    "expected an array of tables, found a single table: write [[route]], not [route]",
                ),
            ],
        );
        assert_errors(
            "[[timeouts]]\nidle = \"5m\"\n[[route]]\nname = \"a\"\n[[route.timeouts]]\nidle = \"1m\"\n\
             [[route.backend_tls]]\nca = \"ca.pem\"\n",
            &[
                (
                    1,
                    "timeouts",
                    "expected a single table, found an array of tables: write [timeouts], not [[timeouts]]",
                ),
                (
                    5,
                    "route[0].timeouts",
                    "expected a single table, found an array of tables: write [route.timeouts], not [[route.timeouts]]",
                ),
                (
                    7,
                    "route[0].backend_tls",
                    "expected a single table, found an array of tables: write [route.backend_tls], not [[route.backend_tls]]",
                ),
            ],
        );
        // Inline, and a table where an array of strings goes (no [[...]] advice there).
        assert_errors(
            "listener = { listen = \"x\" }\ntimeouts = []\n[[route]]\n[route.origins]\na = 1\n",
            &[
                (1, "listener", "expected an array of tables, found a table"),
                (
                    2,
                    "timeouts",
                    "expected a table ([timeouts] or timeouts = { ... }), found an array",
                ),
                (
                    4,
                    "route[0].origins",
                    "expected an array, found a table ([route.origins])",
                ),
            ],
        );
    }

    /// Every key of the example config, once misspelt and once given a value of another
    /// type: exactly one error, on that key's line, naming it.
    #[test]
    fn each_key_of_the_example_config_misspelt_or_mistyped() {
        let example = include_str!("../../config.example.toml");
        assert!(parse::<FileConfig>(example).errors.is_empty());
        let lines: Vec<&str> = example.lines().collect();
        let mut tried = 0;
        for (i, line) in lines.iter().enumerate() {
            let Some((k, v)) = line.split_once(" = ") else {
                continue;
            };
            if line.starts_with('#') || v.starts_with('{') {
                continue;
            }
            let (k, v) = (k.trim(), v.trim());
            let other = if v.starts_with('"') { "7" } else { "\"x\"" };
            let misspelt = format!("{}{}", &k[..1], &k[2..]);
            for (key, value, message) in [
                (k, other, "expected ".to_string()),
                (
                    &misspelt,
                    v,
                    format!("unknown key \"{misspelt}\"; did you mean \"{k}\"?"),
                ),
            ] {
                let mut changed = lines.clone();
                let replaced = format!("{key} = {value}");
                changed[i] = &replaced;
                let text = changed.join("\n");
                let got = errors(&text);
                assert_eq!(got.len(), 1, "line {}: {replaced}: {got:?}", i + 1);
                let (line, path, m) = &got[0];
                assert_eq!(*line, i + 1, "{replaced}: {got:?}");
                assert!(
                    path == key || path.ends_with(&format!(".{key}")),
                    "{replaced}: {got:?}"
                );
                assert!(m.starts_with(&message), "{replaced}: {got:?}");
                tried += 1;
            }
        }
        assert!(tried > 40, "{tried}");
    }

    #[test]
    fn out_of_range_and_nested_arrays() {
        assert_errors(
            "listener = [[1]]\n[limits]\nmax_headers = 99999999999999999999\n",
            &[
                (1, "listener[0]", "expected a table, found an array"),
                (
                    3,
                    "limits.max_headers",
                    "99999999999999999999 is out of range",
                ),
            ],
        );
    }

    #[test]
    fn bad_array_entries_are_named_by_index_and_the_others_kept() {
        let text = "\
[[route]]
name = \"a\"
backends = [\"ws://a\", 5, { url = \"ws://b\", insecure = true }, \"ws://c\"]
[[route]]
name = \"b\"
[[route.backends]]
url = \"ws://d\"
[[route.backends]]
url = 5
";
        let forms = "expected a URL or a table { url = ..., insecure_skip_verify = ... }";
        assert_errors(
            text,
            &[
                (
                    3,
                    "route[0].backends[1]",
                    &format!("{forms}, found an integer (5)"),
                ),
                (
                    3,
                    "route[0].backends[2]",
                    &format!("{forms}, found a table {{ insecure = true, url = \"ws://b\" }}"),
                ),
                (
                    8,
                    "route[1].backends[1]",
                    &format!("{forms}, found a table {{ url = 5 }}"),
                ),
            ],
        );
        let p = parse::<FileConfig>(text);
        let file = p.file.as_ref().unwrap();
        // Indices stay as written: validation names the others by them.
        let urls: Vec<String> = file.route[0]
            .get_ref()
            .backends
            .as_ref()
            .unwrap()
            .get_ref()
            .iter()
            .map(|b| match b.get_ref() {
                crate::config::file::FileBackend::Url(u) => u.clone(),
                crate::config::file::FileBackend::Table(t) => t.url.clone(),
            })
            .collect();
        assert_eq!(urls[0], "ws://a");
        assert_eq!(urls[3], "ws://c");
        assert_eq!(urls.len(), 4);
        assert!(p.already_reported("route[0].backends[1]"));
        assert!(!p.already_reported("route[0].backends[3]"));
    }

    #[test]
    fn a_string_or_a_list() {
        let text = "[[route]]\n[route.auth.jwt]\nissuer = 5\naudience = [\"a\", 5]\n";
        assert_errors(
            text,
            &[
                (
                    3,
                    "route[0].auth.jwt.issuer",
                    "expected a string or a list of strings, found an integer (5)",
                ),
                (
                    4,
                    "route[0].auth.jwt.audience[1]",
                    "expected a string, found an integer (5)",
                ),
            ],
        );
    }

    #[test]
    fn a_syntax_error_is_the_only_error() {
        let p = parse::<FileConfig>("[[listener]]\nlisten = \"127.0.0.1:8080\nbogus = 1\n");
        assert!(p.file.is_none());
        assert_eq!(p.errors.len(), 1, "{:?}", p.errors);
        assert_eq!(p.errors[0].key, "listener[0].listen");
        assert_eq!(p.errors[0].line, Some(2));
    }

    #[test]
    fn other_schemas_get_the_same_treatment() {
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Doc {
            count: Option<u32>,
            pair: Option<Pair>,
            either: Option<Vec<Either>>,
            empty: Option<Empty>,
        }
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Pair {
            a: String,
            b: bool,
        }
        #[derive(Debug, serde::Deserialize)]
        #[serde(untagged)]
        #[allow(dead_code)]
        enum Either {
            N(i64),
            B(bool),
        }
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Empty {}

        let p = parse::<Doc>(
            "count = -1\npair = { a = \"x\" }\neither = [1, \"x\", true]\n[empty]\nx = 1\n",
        );
        let got: Vec<(Option<usize>, &str, &str)> = p
            .errors
            .iter()
            .map(|e| (e.line, e.key.as_str(), e.message.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (
                    Some(1),
                    "count",
                    "expected a non-negative integer, found -1"
                ),
                (Some(2), "pair", "missing key \"b\""),
                (
                    Some(3),
                    "either[1]",
                    "expected one of the forms this key takes, found a string (\"x\")"
                ),
                (
                    Some(5),
                    "empty.x",
                    "unknown key \"x\": none are allowed here"
                ),
            ]
        );
        for e in &p.errors {
            assert_config_words(&e.message);
        }
        assert!(p.file.is_some());
    }

    #[test]
    fn near_misses() {
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let keys = names(&[
            "backends",
            "balance",
            "name",
            "handshake_timeout",
            "ca",
            "url",
        ]);
        assert_eq!(did_you_mean("bakends", &keys), Some("backends"));
        assert_eq!(did_you_mean("bcakends", &keys), Some("backends"));
        assert_eq!(did_you_mean("Backends", &keys), Some("backends"));
        assert_eq!(
            did_you_mean("hanshake_timout", &keys),
            Some("handshake_timeout")
        );
        assert_eq!(did_you_mean("nmae", &keys), Some("name"));
        assert_eq!(did_you_mean("cx", &keys), Some("ca"));
        assert_eq!(did_you_mean("xy", &keys), None);
        assert_eq!(did_you_mean("frobnicate", &keys), None);
        assert_eq!(edit_distance("ab", "ba"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn serde_words_are_translated() {
        for (serde, ours) in [
            (
                "invalid length 2, expected a tuple of size 3",
                "invalid length 2, expected a tuple of size 3",
            ),
            (
                "unknown field `x`, there are no fields",
                "unknown key \"x\", there are no keys",
            ),
            (
                "invalid type: map, expected struct FileTls",
                "invalid type: table, expected table",
            ),
            (
                "data did not match any variant of untagged enum FileBackend",
                "data did not match any form of value",
            ),
            ("expected i64 or u64", "expected integer or integer"),
        ] {
            assert_eq!(scrub(serde), ours);
            assert_config_words(&scrub(serde));
        }
    }

    #[test]
    fn a_file_full_of_mistakes_is_reported_up_to_a_bound() {
        let text: String = (0..150).map(|i| format!("bogus{i} = {i}\n")).collect();
        let p = parse::<FileConfig>(&text);
        assert_eq!(p.errors.len(), MAX_ERRORS + 1);
        assert!(p.file.is_none());
    }
}
