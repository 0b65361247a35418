//! The config's words for serde's and toml's messages: "expected a string, found an integer",
//! "did you mean", `[[listener]]` versus `[listener]`, never a Rust type name.

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::{Hit, Step, Takes, key_path, table_at, value_at};

/// The error's message in the config's words, and for a misspelt key the key path it was
/// probably meant to be when that key is absent (a "missing" error for it would repeat this).
///
/// `homes(key, table)` names the other tables that take a key unknown in `table` (its key
/// names from the root), asked only when the key is no slip of one of its table's own.
pub(super) fn describe(
    text: &str,
    doc: &mut Spanned<DeTable<'_>>,
    hit: &Hit,
    message: &str,
    homes: impl Fn(&str, &[&str]) -> Vec<String>,
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
        if suggestion.is_none() {
            let table: Vec<&str> = parent
                .iter()
                .filter_map(|s| match s {
                    Step::Key(k) => Some(k.as_str()),
                    Step::Index(_) => None,
                })
                .collect();
            let elsewhere = homes(&name, &table);
            if !elsewhere.is_empty() {
                let m = format!(
                    "unknown key \"{name}\" here: it belongs in {}",
                    elsewhere.join(" or ")
                );
                return (m, None);
            }
        }
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
pub(super) fn table_expected(path: &[Step], found: &str) -> String {
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
/// ("data did not match any variant of untagged enum ...") says neither. (None now:
/// `FileBackend`, the one there was, reads its forms itself to name the key at fault.)
pub(super) const UNTAGGED_FORMS: &[(&str, &str)] = &[];

/// `unknown key "bakends"; did you mean "backends"?`, or the keys there are.
pub(super) fn unknown(what: &str, name: &str, names: &[String]) -> String {
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
pub(super) fn backticked(s: &str) -> (String, Vec<String>) {
    let mut parts = s.split('`').skip(1).step_by(2).map(str::to_string);
    let first = parts.next().unwrap_or_default();
    (first, parts.collect())
}

/// The closest of `names` to `name`, if close enough to be a slip: at most two edits (or a
/// third of the length, for long keys), and never a complete rewrite.
pub(super) fn did_you_mean<'a>(name: &str, names: &'a [String]) -> Option<&'a str> {
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
pub(super) fn edit_distance(a: &str, b: &str) -> usize {
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
pub(super) fn found(v: &DeValue<'_>, text: &str, snippet: &str, table_entries: bool) -> String {
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
pub(super) fn header_name(snippet: &str) -> Option<(&str, bool)> {
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
pub(super) fn expected(exp: &str) -> String {
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
pub(super) fn scrub(message: &str) -> String {
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
