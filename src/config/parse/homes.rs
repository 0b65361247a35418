//! Where a key that is unknown in its table is known: `idle` written in `[[route]]` belongs
//! in `[route.timeouts]` (or the top-level `[timeouts]`).
//!
//! Like the rest of the parser this does not know the schema: it maps it by asking serde.
//! A document holding one key nobody has (`route = [{ timeouts = { PROBE = 0 } }]`) fails with
//! the names its table does take ("unknown field `PROBE`, expected one of ..."); each of those
//! names is tried as a table and as an array of tables in turn. Only done for an unknown key
//! that is no slip of another name in its own table, so it costs nothing on a good file.

use serde::de::DeserializeOwned;
use toml::de::DeTable;

use super::words::backticked;

/// A key no table of the config has.
const PROBE: &str = "__wsgate_probe__";

/// Tables nested deeper than this are not looked into (the config's deepest is 3).
const MAX_DEPTH: usize = 4;

/// How many homes a message names at most.
const MAX_HOMES: usize = 3;

/// One table of the schema: its key path from the root, and for each step whether that key
/// takes an array of tables (`[[route]]`) or a single table.
#[derive(Debug, Clone)]
pub(super) struct Table {
    path: Vec<(String, bool)>,
    keys: Vec<String>,
}

impl Table {
    /// The table's header as written in the file: `[[route]]`, `[route.timeouts]`, `[limits]`.
    fn header(&self) -> String {
        let dotted = self
            .path
            .iter()
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>()
            .join(".");
        match self.path.last() {
            None => "the top level".to_string(),
            Some((_, true)) => format!("[[{dotted}]]"),
            Some((_, false)) => format!("[{dotted}]"),
        }
    }

    fn names(&self) -> Vec<&str> {
        self.path.iter().map(|(k, _)| k.as_str()).collect()
    }
}

/// Every table of the schema of `T`, the top level first: mapped once per parse, and only
/// when a key needs a home.
pub(super) fn schema<T: DeserializeOwned>() -> Vec<Table> {
    let mut tables = Vec::new();
    map::<T>(Vec::new(), &mut tables);
    tables
}

/// The tables of `schema` other than `here` (key names from the root, array indices left
/// out) that take `key`, nearest first: tables inside `here`, then the rest from the top
/// level down. A key that is a table there is named as that table (`[limits]`, not "the
/// top level").
pub(super) fn homes(schema: &[Table], key: &str, here: &[&str]) -> Vec<String> {
    let mut found: Vec<&Table> = schema
        .iter()
        .filter(|t| t.names() != here && t.keys.iter().any(|k| k == key))
        .collect();
    // Stable: tables of the same depth keep the order of their keys in the schema.
    found.sort_by_key(|t| (!t.names().starts_with(here), t.path.len()));
    found
        .iter()
        .take(MAX_HOMES)
        .map(|t| {
            let own = schema.iter().find(|c| {
                c.path.len() == t.path.len() + 1
                    && c.path.starts_with(&t.path)
                    && c.path.last().is_some_and(|(k, _)| k == key)
            });
            own.unwrap_or(t).header()
        })
        .collect()
}

/// Maps the table at `path` and every table under it into `out`.
fn map<T: DeserializeOwned>(path: Vec<(String, bool)>, out: &mut Vec<Table>) {
    let Some(keys) = keys_of::<T>(&path) else {
        return;
    };
    let depth = path.len();
    out.push(Table {
        path: path.clone(),
        keys: keys.clone(),
    });
    if depth >= MAX_DEPTH {
        return;
    }
    let mut children = Vec::new();
    for key in &keys {
        for array in [false, true] {
            let mut child = path.clone();
            child.push((key.clone(), array));
            if keys_of::<T>(&child).is_some() {
                children.push(child);
                break;
            }
        }
    }
    for child in children {
        map::<T>(child, out);
    }
}

/// The keys the table at `path` takes, if there is a table there: from the error for a
/// document that holds only [`PROBE`] in it.
fn keys_of<T: DeserializeOwned>(path: &[(String, bool)]) -> Option<Vec<String>> {
    let mut text = format!("{PROBE} = 0");
    for (key, array) in path.iter().rev() {
        text = if *array {
            format!("{key} = [{{ {text} }}]")
        } else {
            format!("{key} = {{ {text} }}")
        };
    }
    let doc = DeTable::parse(&text).ok()?;
    let e = T::deserialize(toml::de::Deserializer::from(doc)).err()?;
    let rest = e.message().trim().strip_prefix("unknown field ")?;
    let (name, names) = backticked(rest);
    (name == PROBE).then_some(names)
}
