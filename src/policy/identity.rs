//! Identity headers for the backend: templates filled from token claims and connection facts.

use serde_json::Value;

use super::Claims;

/// A header value template: literal text with `{name}` fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
    /// The separators of [`SEPARATORS`] the template's own text uses, which no claim may
    /// carry: in `user={sub}; org={org.id}`, a `sub` of `mallory; org=acme` would make a
    /// second `org` for a backend that takes the first.
    delimiters: Vec<char>,
}

/// What structures a header value into fields: lists, parameters and quoted strings (RFC
/// 9110 §5.6: `"` `,` `;` `=` and the escape `\`), query-string pairs (`&`) and pipes (`|`).
/// `:`, `/` and spaces are left to claims: `{iss}/{sub}` may well carry a URL, `{name}` a
/// space.
const SEPARATORS: &str = "\",;=\\&|";

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    /// A claim, by dotted path into nested objects.
    Claim(String),
    /// The verified client-certificate subject (mutual TLS).
    TlsSubject,
    /// The client's address.
    ClientIp,
}

/// What templates are filled from.
pub struct Facts<'a> {
    pub claims: Option<&'a Claims>,
    pub tls_subject: Option<&'a str>,
    pub client_ip: std::net::IpAddr,
}

impl Template {
    /// Parses `"user {sub} in {org.id}"`; `{{` and `}}` are literal braces.
    pub fn parse(s: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut chars = s.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    text.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    text.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) => name.push(c),
                            None => return Err(format!("{s:?}: unclosed '{{'")),
                        }
                    }
                    let name = name.trim();
                    if name.is_empty() {
                        return Err(format!("{s:?}: empty field '{{}}'"));
                    }
                    if !text.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut text)));
                    }
                    parts.push(match name {
                        "tls.subject" => Part::TlsSubject,
                        "client.ip" => Part::ClientIp,
                        claim => Part::Claim(claim.to_string()),
                    });
                }
                '}' => return Err(format!("{s:?}: unmatched '}}' (write '}}}}' for a brace)")),
                // No header value can carry a control character but tab (RFC 9110 §5.5):
                // the header would be left out of every request, without a word.
                c if c.is_ascii_control() && c != '\t' => {
                    return Err(format!(
                        "{s:?}: {c:?} cannot be in a header value (a control character)"
                    ));
                }
                c => text.push(c),
            }
        }
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        let mut delimiters: Vec<char> = (parts.iter())
            .filter_map(|p| match p {
                Part::Text(t) => Some(t.chars().filter(|c| SEPARATORS.contains(*c))),
                _ => None,
            })
            .flatten()
            .collect();
        delimiters.sort_unstable();
        delimiters.dedup();
        Ok(Template { parts, delimiters })
    }

    /// Whether the template reads token claims (so it needs `[route.auth.jwt]`).
    pub fn uses_claims(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Claim(_)))
    }

    /// The header value, or `None` when a field has no value (the header is then not set:
    /// better absent than half-filled) or none a header can carry as it is: an empty
    /// string, one with white space at either end (RFC 9110 §5.5: the backend's parser
    /// would trim it, and `" admin "` would read as `admin`), an empty list, a list with
    /// anything but non-empty scalars, or a list entry with a comma (it would read as two);
    /// and any claim with a separator (`"`, `,`, `;`, `=`) the template's own text uses (`;`
    /// or `=` in `user={sub}; org={org.id}`), which would let a claim write fields of its
    /// own.
    pub fn render(&self, facts: &Facts<'_>) -> Option<String> {
        let mut out = String::new();
        let own = |v: &str| (!v.contains(&self.delimiters[..])).then_some(());
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                // RFC 4514's form escapes its own separators in a name's values.
                Part::TlsSubject => out.push_str(facts.tls_subject?),
                Part::ClientIp => out.push_str(&facts.client_ip.to_string()),
                Part::Claim(path) => {
                    // Found as the claim rules and `hash_key = "claim:..."` find it (a
                    // top-level claim of the whole name first): the value a rule admitted is
                    // the value the backend is told.
                    match super::jwt::claim(facts.claims?, path)? {
                        // Arrays (roles, scopes) as a comma-separated list of their scalars.
                        Value::Array(items) if !items.is_empty() => {
                            for (i, item) in items.iter().enumerate() {
                                let item = scalar(item)?;
                                if item.contains(',') {
                                    return None;
                                }
                                own(&item)?;
                                if i > 0 {
                                    out.push(',');
                                }
                                out.push_str(&item);
                            }
                        }
                        v => {
                            let v = scalar(v)?;
                            own(&v)?;
                            out.push_str(&v);
                        }
                    }
                }
            }
        }
        Some(out)
    }
}

/// A claim's scalar value as header text: `None` for anything else, and for a string that
/// is empty or has white space at either end.
fn scalar(v: &Value) -> Option<std::borrow::Cow<'_, str>> {
    match v {
        Value::String(s) if !s.is_empty() && s.trim() == s => Some(s.as_str().into()),
        Value::Number(n) => Some(n.to_string().into()),
        Value::Bool(b) => Some(if *b { "true" } else { "false" }.into()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A literal no header value can carry is the config's error, not a header silently
    /// left out of every request (`wsgate check` passed it).
    #[test]
    fn control_characters_are_refused() {
        for bad in [
            "line\nbreak",
            "nul\0",
            "{client.ip}\r\nX-Injected: 1",
            "del\x7f",
        ] {
            let e = Template::parse(bad).unwrap_err();
            assert!(e.contains("cannot be in a header value"), "{bad:?}: {e}");
        }
        assert!(Template::parse("tab\tis fine, so is é").is_ok());
    }

    #[test]
    fn renders_claims_and_facts() {
        let claims: Claims = serde_json::from_str(
            r#"{"sub":"alice","org":{"id":7},"roles":["a","b"],"admin":true}"#,
        )
        .unwrap();
        let facts = Facts {
            claims: Some(&claims),
            tls_subject: None,
            client_ip: "10.0.0.1".parse().unwrap(),
        };
        let t = Template::parse("{sub}@{org.id} [{roles}] {admin} {client.ip} {{x}}").unwrap();
        assert_eq!(t.render(&facts).unwrap(), "alice@7 [a,b] true 10.0.0.1 {x}");
        assert_eq!(
            Template::parse("{tls.subject}").unwrap().render(&facts),
            None
        );
        assert_eq!(Template::parse("{missing}").unwrap().render(&facts), None);
        // A namespaced claim (a URL full of dots) is one claim, and a top-level claim of the
        // whole name comes before a path through objects, as for the claim rules.
        let claims: Claims = serde_json::from_str(
            r#"{"https://example.com/roles":["a"],"org.id":"42","org":{"id":"7"}}"#,
        )
        .unwrap();
        let facts = Facts {
            claims: Some(&claims),
            ..facts
        };
        let t = Template::parse("{https://example.com/roles} {org.id}").unwrap();
        assert_eq!(t.render(&facts).unwrap(), "a 42");
        assert!(Template::parse("{sub").is_err());
        assert!(Template::parse("a}b").is_err());
        assert!(Template::parse("{}").is_err());
    }

    #[test]
    fn values_a_header_cannot_carry_as_they_are_leave_it_out() {
        let claims: Claims = serde_json::from_str(
            r#"{"pad":"  admin  ","empty":"","none":[],"nested":["a",["b"]],"obj":[{"x":1}],
                "comma":["a,b"],"mixed":[1,2.5,true,"x"],"inner":"a b"}"#,
        )
        .unwrap();
        let facts = Facts {
            claims: Some(&claims),
            tls_subject: None,
            client_ip: "10.0.0.1".parse().unwrap(),
        };
        let render = |t: &str| Template::parse(t).unwrap().render(&facts);
        for t in ["{pad}", "{empty}", "{none}", "{nested}", "{obj}", "{comma}"] {
            assert_eq!(render(t), None, "{t}");
        }
        assert_eq!(render("{mixed}").as_deref(), Some("1,2.5,true,x"));
        assert_eq!(render("{inner}").as_deref(), Some("a b"));
    }

    /// A claim may not carry a separator the template's text uses: `mallory; org=acme` in
    /// `user={sub}; org={org}` would give a backend that takes the first `org` acme's.
    #[test]
    fn a_claim_cannot_write_fields_of_its_own() {
        let claims: Claims = serde_json::from_str(
            r#"{"sub":"mallory; org=acme","org":"evil","name":"Doe, John","amp":"a&org=b","pipe":"a|b",
                "iss":"https://idp.example/a","roles":["a","b;c"],"q":"say \"hi\""}"#,
        )
        .unwrap();
        let facts = Facts {
            claims: Some(&claims),
            tls_subject: Some("CN=alice,O=Acme"),
            client_ip: "10.0.0.1".parse().unwrap(),
        };
        let render = |t: &str| Template::parse(t).unwrap().render(&facts);
        assert_eq!(render("user={sub}; org={org}"), None);
        assert_eq!(render("{org}, {name}"), None);
        assert_eq!(render("roles={roles}; v=1"), None);
        assert_eq!(render("roles={roles}").as_deref(), Some("roles=a,b;c"));
        assert_eq!(render("name=\"{q}\""), None);
        assert_eq!(render("user={amp}&org={org}"), None);
        assert_eq!(render("{pipe}|{org}"), None);
        // Separators the text does not use are the claim's own.
        assert_eq!(render("{sub}").as_deref(), Some("mallory; org=acme"));
        assert_eq!(render("{name}").as_deref(), Some("Doe, John"));
        assert_eq!(
            render("{iss}/{org}").as_deref(),
            Some("https://idp.example/a/evil")
        );
        assert_eq!(
            render("org:{org} name:{name}").as_deref(),
            Some("org:evil name:Doe, John")
        );
        // A certificate subject escapes its own (RFC 4514).
        assert_eq!(
            render("cert={tls.subject}").as_deref(),
            Some("cert=CN=alice,O=Acme")
        );
    }
}
