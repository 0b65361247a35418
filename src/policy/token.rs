//! Where a route's token is found: the `Authorization` header, a cookie, a query parameter
//! or the subprotocol list. Pure functions over the request, unit-tested here; the JWT
//! verifier (`jwt/`) never sees a request, only the token these find.

use super::cookie;
use crate::query;

/// A place a token may be taken from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `Authorization: Bearer <token>`.
    Header,
    /// A cookie of this name.
    Cookie(String),
    /// A query parameter of this name (removed from the URL the backend sees).
    Query(String),
    /// `Sec-WebSocket-Protocol`: a `bearer.<token>` entry, or an `access_token` or `bearer`
    /// entry followed by the token as the next entry.
    Subprotocol,
}

impl TokenSource {
    pub fn parse(s: &str) -> Result<TokenSource, String> {
        let named = |kind: &str, name: &str| {
            if name.is_empty() {
                Err(format!(
                    "{kind}: needs a name, e.g. \"{kind}:access_token\""
                ))
            } else {
                Ok(name.to_string())
            }
        };
        match s.split_once(':') {
            None if s == "header" => Ok(TokenSource::Header),
            None if s == "subprotocol" => Ok(TokenSource::Subprotocol),
            Some(("cookie", name)) => named("cookie", name).map(TokenSource::Cookie),
            Some(("query", name)) => named("query", name).map(TokenSource::Query),
            _ => Err(format!(
                "unknown token source {s:?}: use \"header\", \"cookie:NAME\", \"query:NAME\" or \"subprotocol\""
            )),
        }
    }
}

/// A token found in the request, and where.
pub(crate) struct FoundToken {
    pub token: String,
    pub source: TokenSource,
}

/// The subprotocol entries that carry a token: `bearer.<token>`, or `access_token`/`bearer`
/// followed by the token. Returns the first token (the one checked) and the indices of
/// every token-carrying entry, all of which are removed: a second token offered beside the
/// first is a credential too, and the backend never sees one.
///
/// The markers are told apart from other entries without regard to ASCII case (`Bearer.…`,
/// `ACCESS_TOKEN`): subprotocols are case-sensitive to RFC 6455, but a backend that matches
/// its marker as `Authorization`'s scheme is matched (ignoring case) would read a token in a
/// spelling wsgate passed on unchecked.
pub(crate) fn token_in_protocols(protocols: &[String]) -> Option<(String, Vec<usize>)> {
    let mut first = None;
    let mut entries = Vec::new();
    let mut i = 0;
    while i < protocols.len() {
        let p = &protocols[i];
        if let Some(t) = bearer_entry(p)
            && !t.is_empty()
        {
            first.get_or_insert_with(|| t.to_string());
            entries.push(i);
        } else if is_token_marker(p)
            && let Some(t) = protocols.get(i + 1)
        {
            first.get_or_insert_with(|| t.clone());
            entries.extend([i, i + 1]);
            i += 1;
        }
        i += 1;
    }
    first.map(|t| (t, entries))
}

/// The token of a `bearer.<token>` subprotocol entry (the prefix in any ASCII case).
pub(crate) fn bearer_entry(p: &str) -> Option<&str> {
    let prefix = p.get(..7)?;
    prefix.eq_ignore_ascii_case("bearer.").then(|| &p[7..])
}

/// Whether a subprotocol entry is a marker whose next entry is a token (`access_token`,
/// `bearer`, in any ASCII case).
pub(crate) fn is_token_marker(p: &str) -> bool {
    p.eq_ignore_ascii_case("access_token") || p.eq_ignore_ascii_case("bearer")
}

/// The value of query parameter `name`, the first of that name, percent-decoded.
///
/// Names are compared decoded, as the backend's framework reads them: `acc%65ss_token` is
/// `access_token` to it, so it must be to wsgate too, or a token wsgate never checked would
/// reach the backend under the name it trusts (see [`without_query_param`]).
pub(crate) fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query::param(query, name, false)
}

/// Whether a backend may read the query parameter named `raw` (as sent) as `name`: decoded
/// (`acc%65ss_token`); in another case (ASP.NET's query collection ignores case, so
/// `Access_Token` is its `access_token`); as PHP names its variables, `+` a space and then a
/// space, a dot or an opening bracket an underscore (`access.token`, `access+token`,
/// `access[token`), and nothing from a NUL on (`access_token%00x`: PHP takes the name's C
/// length); or as an array or map of that name, or that name in brackets
/// (`access_token[]`, `access_token[x`, `[access_token]`, `access_token]`), which PHP, Rack
/// and Express's `qs` read as `access_token`. Rack's rule covers the rest: brackets at the
/// start skipped, the name up to the next bracket.
fn reads_as(raw: &str, name: &str) -> bool {
    if query::decode(raw, false).eq_ignore_ascii_case(name) {
        return true;
    }
    let php = query::decode(raw, true);
    let php = php.split('\0').next().unwrap_or_default();
    let php = php.trim_start_matches(' ');
    let php_reads = |s: &str| {
        s.len() == name.len()
            && s.bytes().zip(name.bytes()).all(|(a, b)| {
                let a = if matches!(a, b' ' | b'.' | b'[') {
                    b'_'
                } else {
                    a
                };
                a.eq_ignore_ascii_case(&b)
            })
    };
    let rack = php.trim_start_matches(['[', ']']);
    let rack = &rack[..rack.find(['[', ']']).unwrap_or(rack.len())];
    php_reads(rack) || php_reads(php)
}

/// The request URI without query parameter `name`: every parameter a backend may read as it
/// ([`reads_as`]). `None` when there is none (the URI stands as it is).
pub(crate) fn without_query_param(uri: &http::Uri, name: &str) -> Option<http::Uri> {
    let q = uri.query()?;
    let mut kept = String::with_capacity(q.len());
    let (mut removed, mut first) = (false, true);
    for kv in q.split('&') {
        // Rack 2 and older Python split on `;` too: a piece that hides the name behind one
        // (`v=1;access_token=x`) goes whole.
        if kv
            .split(';')
            .any(|kv| reads_as(kv.split_once('=').map_or(kv, |(k, _)| k).trim_start(), name))
        {
            removed = true;
        } else {
            if !first {
                kept.push('&');
            }
            kept.push_str(kv);
            first = false;
        }
    }
    if !removed {
        return None;
    }
    let pq = if first {
        uri.path().to_string()
    } else {
        format!("{}?{kept}", uri.path())
    };
    let mut p = uri.clone().into_parts();
    p.path_and_query = pq.parse().ok();
    http::Uri::from_parts(p).ok()
}

pub(crate) fn find_token(
    sources: &[TokenSource],
    parts: &http::request::Parts,
    protocols: &[String],
) -> Option<FoundToken> {
    for s in sources {
        let token = match s {
            TokenSource::Header => parts
                .headers
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| {
                    let (scheme, t) = v.trim().split_once(' ')?;
                    scheme
                        .eq_ignore_ascii_case("bearer")
                        .then(|| t.trim().to_string())
                }),
            TokenSource::Cookie(name) => cookie::get(&parts.headers, name).map(str::to_string),
            TokenSource::Query(name) => query_param(parts.uri.query(), name),
            TokenSource::Subprotocol => token_in_protocols(protocols).map(|(t, _)| t),
        };
        if let Some(token) = token.filter(|t| !t.is_empty()) {
            return Some(FoundToken {
                token,
                source: s.clone(),
            });
        }
    }
    None
}

pub(crate) fn describe_sources(sources: &[TokenSource]) -> String {
    sources
        .iter()
        .map(|s| match s {
            TokenSource::Header => "Authorization header".to_string(),
            TokenSource::Cookie(n) => format!("cookie {n:?}"),
            TokenSource::Query(n) => format!("query parameter {n:?}"),
            TokenSource::Subprotocol => "Sec-WebSocket-Protocol".to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut b = http::Request::get(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn protocols(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn sources_parse() {
        assert_eq!(TokenSource::parse("header"), Ok(TokenSource::Header));
        assert_eq!(
            TokenSource::parse("subprotocol"),
            Ok(TokenSource::Subprotocol)
        );
        assert_eq!(
            TokenSource::parse("cookie:session"),
            Ok(TokenSource::Cookie("session".into()))
        );
        assert_eq!(
            TokenSource::parse("query:access_token"),
            Ok(TokenSource::Query("access_token".into()))
        );
        assert!(
            TokenSource::parse("cookie:")
                .unwrap_err()
                .contains("needs a name")
        );
        assert!(
            TokenSource::parse("query:")
                .unwrap_err()
                .contains("needs a name")
        );
        assert!(
            TokenSource::parse("body")
                .unwrap_err()
                .contains("unknown token source")
        );
        assert!(TokenSource::parse("Header").is_err());
    }

    #[test]
    fn bearer_header() {
        let found = |h: &str| {
            find_token(
                &[TokenSource::Header],
                &parts("/", &[("authorization", h)]),
                &[],
            )
            .map(|f| f.token)
        };
        assert_eq!(found("Bearer abc.def.ghi").as_deref(), Some("abc.def.ghi"));
        // The scheme is case-insensitive (RFC 9110 §11.1); surrounding space is not the token.
        assert_eq!(found("bearer  abc ").as_deref(), Some("abc"));
        assert_eq!(found("BEARER abc").as_deref(), Some("abc"));
        assert_eq!(found("Basic dXNlcjpwdw=="), None);
        assert_eq!(found("Bearer"), None);
        assert_eq!(found("Bearer "), None);
        assert!(find_token(&[TokenSource::Header], &parts("/", &[]), &[]).is_none());
    }

    #[test]
    fn cookie_source() {
        let sources = [TokenSource::Cookie("session".into())];
        let p = parts("/", &[("cookie", "theme=dark; session=tok123; x=1")]);
        let f = find_token(&sources, &p, &[]).unwrap();
        assert_eq!((f.token.as_str(), &f.source), ("tok123", &sources[0]));
        // A cookie whose name merely ends the same way is not it; an empty value is no token.
        assert!(find_token(&sources, &parts("/", &[("cookie", "xsession=t")]), &[]).is_none());
        assert!(find_token(&sources, &parts("/", &[("cookie", "session=")]), &[]).is_none());
    }

    #[test]
    fn query_source() {
        assert_eq!(
            query_param(Some("a=1&access_token=t.o.k&b=2"), "access_token").as_deref(),
            Some("t.o.k")
        );
        assert_eq!(
            query_param(Some("access_token"), "access_token").as_deref(),
            Some("")
        );
        assert_eq!(query_param(Some("xaccess_token=1"), "access_token"), None);
        assert_eq!(query_param(None, "access_token"), None);
        // The first occurrence wins, as in most frameworks.
        assert_eq!(query_param(Some("t=1&t=2"), "t").as_deref(), Some("1"));
        // Names and values are read decoded, as the backend's framework reads them.
        assert_eq!(
            query_param(Some("acc%65ss_token=a%2Eb"), "access_token").as_deref(),
            Some("a.b")
        );
        assert_eq!(query_param(Some("t%zz=1&t%=2"), "t"), None);
        assert_eq!(query_param(Some("t=%e"), "t").as_deref(), Some("%e"));

        let sources = [TokenSource::Query("t".into())];
        let f = find_token(&sources, &parts("/ws?x=1&t=abc", &[]), &[]).unwrap();
        assert_eq!(f.token, "abc");
        assert!(find_token(&sources, &parts("/ws?t=", &[]), &[]).is_none());
        assert!(find_token(&sources, &parts("/ws", &[]), &[]).is_none());
    }

    #[test]
    fn query_param_removed_from_uri() {
        let strip_as = |uri: &str, name: &str| {
            let uri: http::Uri = uri.parse().unwrap();
            without_query_param(&uri, name).map(|u| u.to_string())
        };
        let strip = |uri: &str| strip_as(uri, "t");
        assert_eq!(
            strip("/ws?a=1&t=secret&b=2").as_deref(),
            Some("/ws?a=1&b=2")
        );
        assert_eq!(strip("/ws?t=secret").as_deref(), Some("/ws"));
        assert_eq!(strip("/ws?t").as_deref(), Some("/ws"));
        assert_eq!(strip("/ws"), None);
        assert_eq!(strip("/ws?tt=1"), None);
        // Every parameter that decodes to the name goes, the one used or not.
        assert_eq!(
            strip("/ws?t=a&%74=forged&x=1&%74").as_deref(),
            Some("/ws?x=1")
        );
        // And every one PHP reads as it (a space, a dot or a bracket for an underscore).
        let strip_access = |uri: &str| strip_as(uri, "access_token");
        assert_eq!(
            strip_access("/ws?access.token=a&access+token=b&%20access%5Btoken=c&x=1").as_deref(),
            Some("/ws?x=1")
        );
        assert_eq!(strip_access("/ws?accessXtoken=a&access__token=b"), None);
        // And every array or map of that name (PHP, Rack and Express's `qs` read them as it).
        assert_eq!(
            strip_access(
                "/ws?access_token[]=a&access_token[x]=b&access_token%5B%5D=c&access.token[][y]=d&x=1"
            )
            .as_deref(),
            Some("/ws?x=1")
        );
        // And the name in brackets, or cut at a bracket, as Rack and `qs` read it.
        assert_eq!(
            strip_access(
                "/ws?[access_token]=a&access_token]=b&]access_token=c&access_token[x=d\
                 &%5Baccess_token%5D=e&x=1"
            )
            .as_deref(),
            Some("/ws?x=1")
        );
        // Behind a `;`, which Rack 2 splits on too, the whole `&` piece goes.
        assert_eq!(
            strip_access("/ws?v=1;%20access_token=a&x=1").as_deref(),
            Some("/ws?x=1")
        );
        // A map named otherwise is another parameter: `access[token]` is `access`'s `token`.
        assert_eq!(
            strip_access("/ws?access[token]=a&access_tokens[]=b&[access]=c"),
            None
        );
        // In another case, which ASP.NET's query collection reads as the name, and cut at a
        // NUL, as PHP reads it.
        assert_eq!(
            strip_access(
                "/ws?Access_Token=a&ACCESS%5FTOKEN=b&access.Token=c&access_token%00=d\
                 &access_token%00junk=e&Access_Token%00[]=f&x=1"
            )
            .as_deref(),
            Some("/ws?x=1")
        );
        assert_eq!(
            strip_access("/ws?%00access_token=a&access%00_token=b"),
            None
        );
        // What is kept stays as it was sent, empty parameters too.
        assert_eq!(strip("/ws?&t=1&a=%41").as_deref(), Some("/ws?&a=%41"));
    }

    #[test]
    fn subprotocol_entries() {
        assert_eq!(
            token_in_protocols(&protocols(&["chat", "bearer.abc"])),
            Some(("abc".into(), vec![1]))
        );
        assert_eq!(
            token_in_protocols(&protocols(&["access_token", "abc", "chat"])),
            Some(("abc".into(), vec![0, 1]))
        );
        assert_eq!(
            token_in_protocols(&protocols(&["chat", "bearer", "abc"])),
            Some(("abc".into(), vec![1, 2]))
        );
        // Markers in any case are markers: a backend may match them so.
        assert_eq!(
            token_in_protocols(&protocols(&["chat", "bearer.a", "Bearer.b", "BEARER.c"])),
            Some(("a".into(), vec![1, 2, 3]))
        );
        assert_eq!(
            token_in_protocols(&protocols(&["chat", "Access_Token", "x", "Bearer", "y"])),
            Some(("x".into(), vec![1, 2, 3, 4]))
        );
        assert_eq!(
            token_in_protocols(&protocols(&["bearer", "bearerX"])),
            Some(("bearerX".into(), vec![0, 1]))
        );
        assert_eq!(token_in_protocols(&protocols(&["chat", "bearerz"])), None);
        assert!(crate::policy::subprotocol::shown("Bearer.abc").contains("hidden"));
        // A marker with nothing after it, or an empty `bearer.`, carries no token.
        assert_eq!(
            token_in_protocols(&protocols(&["chat", "access_token"])),
            None
        );
        assert_eq!(token_in_protocols(&protocols(&["bearer."])), None);
        assert_eq!(token_in_protocols(&protocols(&["chat", "superchat"])), None);
        // The first token is the one checked; every token-carrying entry goes.
        assert_eq!(
            token_in_protocols(&protocols(&[
                "bearer.good",
                "chat",
                "bearer.junk",
                "access_token",
                "more"
            ])),
            Some(("good".into(), vec![0, 2, 3, 4]))
        );

        let f = find_token(
            &[TokenSource::Subprotocol],
            &parts("/", &[]),
            &protocols(&["chat", "bearer.xyz"]),
        )
        .unwrap();
        assert_eq!(
            (f.token.as_str(), f.source),
            ("xyz", TokenSource::Subprotocol)
        );
    }

    #[test]
    fn sources_are_tried_in_order() {
        let p = parts(
            "/ws?t=from-query",
            &[
                ("authorization", "Bearer from-header"),
                ("cookie", "s=from-cookie"),
            ],
        );
        let all = [
            TokenSource::Cookie("s".into()),
            TokenSource::Header,
            TokenSource::Query("t".into()),
        ];
        assert_eq!(find_token(&all, &p, &[]).unwrap().token, "from-cookie");
        assert_eq!(find_token(&all[1..], &p, &[]).unwrap().token, "from-header");
        assert_eq!(find_token(&all[2..], &p, &[]).unwrap().token, "from-query");
        // An empty source is skipped, not taken as an empty token.
        let p = parts("/ws?t=q", &[("cookie", "s=")]);
        assert_eq!(find_token(&all, &p, &[]).unwrap().token, "q");
    }

    #[test]
    fn sources_described_for_the_refusal() {
        assert_eq!(
            describe_sources(&[
                TokenSource::Header,
                TokenSource::Cookie("s".into()),
                TokenSource::Query("t".into()),
                TokenSource::Subprotocol
            ]),
            "Authorization header, cookie \"s\", query parameter \"t\", Sec-WebSocket-Protocol"
        );
    }
}
