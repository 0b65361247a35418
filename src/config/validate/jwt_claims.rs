//! `[route.auth.jwt] claims = { role = ["admin", "ops"], "org.id" = "42" }`: the claim
//! rules, checked here so that a value no token could match (a date, a table in a list, an
//! empty list) is an error naming its key and line rather than a route that silently
//! refuses everyone.

use std::collections::BTreeMap;

use toml::{Spanned, Value};

use super::Validator;
use crate::policy::jwt::{ClaimRule, ClaimValue};

/// The claim rules of a `claims` table. A nested table (`claims = { org.id = "42" }`, which
/// TOML reads as `org = { id = "42" }`) names a dotted path, like `"org.id" = "42"`.
pub(super) fn rules(
    v: &mut Validator<'_>,
    key: &str,
    table: Option<&Spanned<BTreeMap<String, Spanned<Value>>>>,
) -> Vec<ClaimRule> {
    let Some(table) = table else {
        return Vec::new();
    };
    if table.get_ref().is_empty() {
        v.err(
            key,
            Some(table.span()),
            "names no claim: give claims and their accepted values, or remove the key",
        );
    }
    let mut out = Vec::new();
    for (name, value) in table.get_ref() {
        let mut found = Vec::new();
        flatten(name.clone(), value.get_ref(), &mut found);
        for (path, inner) in found {
            // Nested values have no place of their own: the line is the entry's.
            match rule(&path, inner) {
                Ok(r) => out.push(r),
                Err(m) => v.err(format!("{key}.{}", quoted(&path)), Some(value.span()), m),
            }
        }
    }
    out
}

/// Every (path, value) under `name`: a table's entries become dotted paths.
fn flatten<'a>(name: String, value: &'a Value, out: &mut Vec<(String, &'a Value)>) {
    match value {
        Value::Table(t) if !t.is_empty() => {
            for (k, inner) in t {
                flatten(format!("{name}.{k}"), inner, out);
            }
        }
        other => out.push((name, other)),
    }
}

/// A key as TOML writes it: bare when it can be, else quoted (`claims."org.id"`).
fn quoted(path: &str) -> String {
    let bare = !path.is_empty()
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare {
        path.to_string()
    } else {
        format!("{path:?}")
    }
}

fn rule(path: &str, value: &Value) -> Result<ClaimRule, String> {
    if path.trim().is_empty() || path.split('.').any(str::is_empty) {
        return Err(format!(
            "{path:?} is not a claim name or a dotted path (no empty parts)"
        ));
    }
    let accepted = match value {
        Value::Array(items) if items.is_empty() => {
            return Err("an empty list admits no token: list the accepted values".into());
        }
        Value::Array(items) => items.iter().map(scalar).collect::<Result<Vec<_>, _>>()?,
        one => vec![scalar(one)?],
    };
    Ok(ClaimRule::new(path, accepted))
}

/// A value a JSON claim can equal.
fn scalar(value: &Value) -> Result<ClaimValue, String> {
    Ok(match value {
        Value::String(s) => ClaimValue::Str(s.clone()),
        Value::Integer(i) => ClaimValue::Int(*i),
        Value::Float(f) if f.is_finite() => ClaimValue::Float(*f),
        Value::Float(_) => return Err("a claim is never inf or nan (JSON has neither)".into()),
        Value::Boolean(b) => ClaimValue::Bool(*b),
        Value::Datetime(_) => {
            return Err(
                "a TOML date is no JSON value: write the claim as a string or a number".into(),
            );
        }
        Value::Array(_) | Value::Table(_) => {
            return Err(
                "must be a string, number or boolean, or a list of them (a token's array matches if it holds one)"
                    .into(),
            );
        }
    })
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use crate::config::ConfigError;
    use crate::policy::jwt::tests::SECRET;
    use crate::policy::jwt::{ClaimRule, ClaimValue};
    use crate::test_support::temp_dir::TempDir;

    /// The config around a `[route.auth.jwt]` table; `table`'s first line is line 11.
    fn load(table: &str) -> Result<crate::config::Config, Vec<ConfigError>> {
        let dir = TempDir::new("claims");
        dir.write("secret", SECRET);
        let text = format!(
            "[[listener]]\nlisten = \"127.0.0.1:0\"\n\n[[route]]\nname = \"r\"\npath = \"/\"\nbackends = [\"ws://127.0.0.1:9\"]\n\n[route.auth.jwt]\nsecret_file = \"secret\"\n{table}"
        );
        crate::config::from_toml_str_in(&text, dir.path())
    }

    fn rules(table: &str) -> Vec<ClaimRule> {
        match load(table) {
            Ok(c) => c.routes[0]
                .policy
                .rules()
                .jwt
                .as_ref()
                .unwrap()
                .claim_rules()
                .to_vec(),
            Err(e) => panic!("refused: {e:#?}\n{table}"),
        }
    }

    /// The table is refused with an error for `key` (under the jwt table) on `line` of
    /// `table` (1 = its first) whose message contains `part`.
    fn assert_refused(table: &str, line: usize, key: &str, part: &str) {
        let errors = load(table).expect_err(table);
        let key = format!("route[0].auth.jwt.{key}");
        assert!(
            errors
                .iter()
                .any(|e| e.key == key && e.line == Some(10 + line) && e.message.contains(part)),
            "no error for {key} on line {} containing {part:?}:\n{errors:#?}",
            10 + line
        );
    }

    #[test]
    fn claim_rules_from_the_table() {
        let s = |x: &str| ClaimValue::Str(x.into());
        assert_eq!(
            rules("claims = { role = [\"admin\", \"ops\"], \"org.id\" = \"42\" }\n"),
            vec![
                ClaimRule::new("org.id", vec![s("42")]),
                ClaimRule::new("role", vec![s("admin"), s("ops")]),
            ]
        );
        // A dotted key is a path too; numbers and booleans keep their types.
        assert_eq!(
            rules("claims = { org.id = 42, tier = [1, 2.5], email_verified = true }\n"),
            vec![
                ClaimRule::new("email_verified", vec![ClaimValue::Bool(true)]),
                ClaimRule::new("org.id", vec![ClaimValue::Int(42)]),
                ClaimRule::new("tier", vec![ClaimValue::Int(1), ClaimValue::Float(2.5)]),
            ]
        );
        assert_eq!(
            rules("[route.auth.jwt.claims]\n\"https://example.com/roles\" = \"admin\"\n"),
            vec![ClaimRule::new(
                "https://example.com/roles",
                vec![s("admin")]
            )]
        );
        assert!(rules("").is_empty());
    }

    #[test]
    fn claim_errors_name_key_and_line() {
        assert_refused("claims = {}\n", 1, "claims", "names no claim");
        assert_refused("claims = { role = [] }\n", 1, "claims.role", "empty list");
        assert_refused(
            "leeway = \"0\"\nclaims = { role = [\"a\", [\"b\"]] }\n",
            2,
            "claims.role",
            "a string, number or boolean, or a list of them",
        );
        assert_refused(
            "claims = { role = [{ a = 1 }] }\n",
            1,
            "claims.role",
            "a list of them",
        );
        assert_refused(
            "claims = { since = 2024-01-01 }\n",
            1,
            "claims.since",
            "a TOML date is no JSON value",
        );
        assert_refused("claims = { x = nan }\n", 1, "claims.x", "never inf or nan");
        assert_refused(
            "claims = { \"a..b\" = \"1\" }\n",
            1,
            "claims.\"a..b\"",
            "no empty parts",
        );
        assert_refused(
            "claims = { org = { id = [] } }\n",
            1,
            "claims.\"org.id\"",
            "empty list",
        );
        // `expire_sessions` is a boolean; parse reports the type with key and line.
        assert_refused(
            "expire_sessions = \"yes\"\n",
            1,
            "expire_sessions",
            "boolean",
        );
    }

    #[test]
    fn expire_sessions_is_off_by_default() {
        let end = |table: &str| {
            let cfg = load(table).expect(table);
            let jwt = cfg.routes[0].policy.rules().jwt.clone().unwrap();
            let claims = serde_json::json!({ "exp": 1_000_000_000 });
            jwt.session_end(claims.as_object().unwrap())
        };
        assert_eq!(end(""), None);
        assert_eq!(end("expire_sessions = false\n"), None);
        let at = |s: u64| Some(SystemTime::UNIX_EPOCH + Duration::from_secs(s));
        // `exp` plus the leeway (30 s by default).
        assert_eq!(end("expire_sessions = true\n"), at(1_000_000_030));
        assert_eq!(
            end("expire_sessions = true\nleeway = \"0\"\n"),
            at(1_000_000_000)
        );
    }
}
