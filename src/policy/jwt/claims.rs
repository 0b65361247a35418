//! Claim rules: what a verified token must say, besides who signed it.
//!
//! `claims = { role = ["admin", "ops"], "org.id" = "42" }` admits a token whose `role` is
//! `"admin"` or `"ops"` (or is an array holding one of them) and whose `org.id` is `"42"`.
//! A signature proves who issued a token, not that it was issued for this route: without a
//! rule, any token of the same issuer (a read-only user's, another service's) opens it.
//! A failed rule is 403 with `error="insufficient_scope"` (RFC 6750 §3.1): the token is good,
//! it just does not grant this.

use serde_json::Value;

use super::super::Claims;

/// One value a claim rule accepts. Types are compared strictly: `"42"` does not match the
/// number 42, so a rule means the same whatever an issuer's JSON encoder does with numbers
/// in strings.
#[derive(Debug, Clone, PartialEq)]
pub enum ClaimValue {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl ClaimValue {
    /// Whether the token's `v` (a scalar) equals this value.
    fn matches(&self, v: &Value) -> bool {
        match (self, v) {
            (ClaimValue::Str(a), Value::String(b)) => a == b,
            (ClaimValue::Bool(a), Value::Bool(b)) => a == b,
            (ClaimValue::Int(a), Value::Number(n)) => {
                n.as_i64() == Some(*a) || (n.is_f64() && n.as_f64() == Some(*a as f64))
            }
            (ClaimValue::Float(a), Value::Number(n)) => n.as_f64() == Some(*a),
            _ => false,
        }
    }
}

/// A claim the token must carry with one of the accepted values.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimRule {
    /// The claim's name, or a dotted path into objects (`org.id`).
    pub path: String,
    /// The values that pass; never empty.
    pub accepted: Vec<ClaimValue>,
}

impl ClaimRule {
    pub fn new(path: impl Into<String>, accepted: Vec<ClaimValue>) -> ClaimRule {
        ClaimRule {
            path: path.into(),
            accepted,
        }
    }

    /// The claim the rule names. A top-level claim of that exact name comes first: namespaced
    /// claims are URLs full of dots (`https://example.com/roles`, as Auth0 requires); else
    /// the name is a path of object keys (`org.id`).
    fn lookup<'c>(&self, claims: &'c Claims) -> Option<&'c Value> {
        claim(claims, &self.path)
    }

    /// Whether `claims` satisfy the rule: the claim equals an accepted value, or is an array
    /// (a roles or groups list) holding one.
    pub fn admits(&self, claims: &Claims) -> bool {
        let ok = |v: &Value| self.accepted.iter().any(|a| a.matches(v));
        match self.lookup(claims) {
            Some(Value::Array(items)) => items.iter().any(ok),
            Some(v) => ok(v),
            None => false,
        }
    }
}

/// The claim `path` names. A top-level claim of that exact name comes first: namespaced
/// claims are URLs full of dots (`https://example.com/roles`, as Auth0 requires); else the
/// name is a path of object keys (`org.id`).
pub fn claim<'c>(claims: &'c Claims, path: &str) -> Option<&'c Value> {
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    let mut parts = path.split('.');
    let mut v = claims.get(parts.next()?)?;
    for k in parts {
        v = v.as_object()?.get(k)?;
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Claims {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    fn s(x: &str) -> ClaimValue {
        ClaimValue::Str(x.into())
    }

    #[test]
    fn values_lists_arrays_and_paths() {
        let role = ClaimRule::new("role", vec![s("admin"), s("ops")]);
        assert!(role.admits(&claims(json!({ "role": "ops" }))));
        assert!(role.admits(&claims(json!({ "role": ["viewer", "admin"] }))));
        assert!(!role.admits(&claims(json!({ "role": "viewer" }))));
        assert!(!role.admits(&claims(json!({ "role": ["viewer"] }))));
        assert!(!role.admits(&claims(json!({ "role": [] }))));
        assert!(!role.admits(&claims(json!({ "roles": "admin" }))));
        assert!(!role.admits(&claims(json!({ "role": null }))));
        // An object is not a list of values: nothing in it matches.
        assert!(!role.admits(&claims(json!({ "role": { "admin": true } }))));
        assert!(!role.admits(&claims(json!({ "role": [["admin"]] }))));

        let org = ClaimRule::new("org.id", vec![s("42")]);
        assert!(org.admits(&claims(json!({ "org": { "id": "42" } }))));
        assert!(!org.admits(&claims(json!({ "org": { "id": "43" } }))));
        assert!(!org.admits(&claims(json!({ "org": "42" }))));
        assert!(!org.admits(&claims(json!({ "org": ["42"] }))));
        // A claim whose own name has the dots wins over the path.
        assert!(org.admits(&claims(json!({ "org.id": "42", "org": { "id": "1" } }))));

        let ns = ClaimRule::new("https://example.com/roles", vec![s("admin")]);
        assert!(ns.admits(&claims(json!({ "https://example.com/roles": ["admin"] }))));
        assert!(!ns.admits(&claims(json!({ "https://example": { "com/roles": "x" } }))));

        let deep = ClaimRule::new("a.b.c", vec![ClaimValue::Bool(true)]);
        assert!(deep.admits(&claims(json!({ "a": { "b": { "c": true } } }))));
        assert!(!deep.admits(&claims(json!({ "a": { "b": { "c": "true" } } }))));
    }

    #[test]
    fn types_compare_strictly() {
        let n = ClaimRule::new("tier", vec![ClaimValue::Int(2)]);
        assert!(n.admits(&claims(json!({ "tier": 2 }))));
        assert!(n.admits(&claims(json!({ "tier": 2.0 }))));
        assert!(n.admits(&claims(json!({ "tier": [1, 2] }))));
        assert!(!n.admits(&claims(json!({ "tier": "2" }))));
        assert!(!n.admits(&claims(json!({ "tier": 3 }))));
        assert!(!n.admits(&claims(json!({ "tier": true }))));
        let big = ClaimRule::new("id", vec![ClaimValue::Int(-1)]);
        assert!(!big.admits(&claims(json!({ "id": u64::MAX }))));
        let f = ClaimRule::new("v", vec![ClaimValue::Float(1.5)]);
        assert!(f.admits(&claims(json!({ "v": 1.5 }))));
        assert!(!f.admits(&claims(json!({ "v": "1.5" }))));
        let s42 = ClaimRule::new("org", vec![s("42")]);
        assert!(!s42.admits(&claims(json!({ "org": 42 }))));
        let b = ClaimRule::new("email_verified", vec![ClaimValue::Bool(true)]);
        assert!(b.admits(&claims(json!({ "email_verified": true }))));
        assert!(!b.admits(&claims(json!({ "email_verified": false }))));
        assert!(!b.admits(&claims(json!({ "email_verified": 1 }))));
    }
}
