//! `[route.auth.forward_auth]`: the auth service's URL and CA, the timeout, the headers
//! sent and copied, the allow cache, the answer header naming the user; built into a
//! [`ForwardAuth`].

use std::sync::Arc;

use http::HeaderName;
use toml::Spanned;

use super::header_name;
use super::{Validator, entries};
use crate::config::file::FileForwardAuth;
use crate::policy::RESERVED_HEADERS;
use crate::policy::forward_auth::{
    DEFAULT_FORWARDED, DEFAULT_TIMEOUT, ForwardAuth, ForwardAuthSettings, NOT_FORWARDABLE,
};

/// Validates `[route.auth.forward_auth]`, reading the CA file now so that errors name key
/// and line.
pub(super) fn forward_auth(
    v: &mut Validator<'_>,
    key: &str,
    f: &Spanned<FileForwardAuth>,
) -> Option<Arc<ForwardAuth>> {
    let t = f.get_ref();
    let url = match &t.url {
        None => {
            v.err(
                format!("{key}.url"),
                Some(f.span()),
                "required: the auth service's URL, e.g. url = \"http://auth.internal/check\"",
            );
            None
        }
        Some(u) => match crate::http_client::parse_http_url(u.get_ref().trim()) {
            Ok(url) => Some(url),
            Err(m) => {
                v.err(format!("{key}.url"), Some(u.span()), m);
                None
            }
        },
    };
    let timeout = v.duration(
        &format!("{key}.timeout"),
        t.timeout.as_ref(),
        DEFAULT_TIMEOUT,
    );
    let cache = v.optional_duration(&format!("{key}.cache"), t.cache.as_ref(), None);

    let mut copy_headers: Vec<HeaderName> = Vec::new();
    for (i, s) in entries(t.copy_headers.as_ref()).iter().enumerate() {
        let k = format!("{key}.copy_headers[{i}]");
        let Some(h) = header_name(v, &k, s.get_ref(), s.span()) else {
            continue;
        };
        if RESERVED_HEADERS.contains(&h.as_str()) {
            v.err(
                k,
                Some(s.span()),
                format!("{h} is built by the proxy itself"),
            );
        } else if copy_headers.contains(&h) {
            v.err(k, Some(s.span()), format!("{h} is listed twice"));
        } else {
            copy_headers.push(h);
        }
    }

    let mut forward_headers: Vec<HeaderName> = Vec::new();
    for (i, s) in entries(t.forward_headers.as_ref()).iter().enumerate() {
        let k = format!("{key}.forward_headers[{i}]");
        let Some(h) = header_name(v, &k, s.get_ref(), s.span()) else {
            continue;
        };
        if NOT_FORWARDABLE.contains(&h.as_str()) {
            v.err(
                k,
                Some(s.span()),
                format!("{h} belongs to the subrequest itself and cannot be forwarded"),
            );
        } else if h.as_str().starts_with("x-forwarded-") {
            v.err(
                k,
                Some(s.span()),
                format!(
                    "{h}: the proxy sends X-Forwarded-For, -Proto, -Host, -Uri and -Method itself"
                ),
            );
        } else if !DEFAULT_FORWARDED.contains(&h) && !forward_headers.contains(&h) {
            // The defaults are always sent; listing one again is harmless.
            forward_headers.push(h);
        }
    }

    let user_header = t.user_header.as_ref().and_then(|s| {
        let k = format!("{key}.user_header");
        let h = header_name(v, &k, s.get_ref(), s.span())?;
        if NOT_FORWARDABLE.contains(&h.as_str()) {
            v.err(
                k,
                Some(s.span()),
                format!("{h} belongs to the answer's framing or routing and cannot name a user"),
            );
            return None;
        }
        Some(h)
    });

    let url = url?;
    if let Some(ca) = &t.ca
        && url.scheme_str() != Some("https")
    {
        v.err(
            format!("{key}.ca"),
            Some(ca.span()),
            "set, but url is not https://",
        );
        return None;
    }
    let ca_path = t.ca.as_ref().map(|ca| v.base.join(ca.get_ref()));
    let tls = match crate::http_client::tls_for(&url, ca_path.as_deref()) {
        Ok(c) => c,
        Err(m) => {
            match &t.ca {
                Some(ca) => v.err(format!("{key}.ca"), Some(ca.span()), m),
                None => v.err(format!("{key}.url"), t.url.as_ref().map(|u| u.span()), m),
            }
            return None;
        }
    };

    Some(Arc::new(ForwardAuth::new(ForwardAuthSettings {
        url,
        timeout,
        copy_headers,
        forward_headers,
        cache,
        tls,
        user_header,
    })))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::ConfigError;

    /// A route with `[route.auth.forward_auth]` holding `table`, validated.
    fn build(table: &str) -> Result<Arc<ForwardAuth>, Vec<ConfigError>> {
        let toml = format!(
            "[[listener]]\nlisten = \"127.0.0.1:0\"\n\n[[route]]\nname = \"r\"\npath = \"/\"\n\
             backends = [\"ws://127.0.0.1:1\"]\n\n[route.auth.forward_auth]\n{table}"
        );
        let config = crate::config::from_toml_str(&toml)?;
        Ok(config.routes[0]
            .policy
            .rules()
            .forward_auth
            .clone()
            .expect("forward_auth configured"))
    }

    fn errors(table: &str) -> Vec<ConfigError> {
        build(table).expect_err("config should be refused")
    }

    #[test]
    fn defaults() {
        let fa = build("url = \"http://auth.internal/check\"").unwrap();
        assert_eq!(fa.url(), "http://auth.internal/check");
        assert_eq!(fa.timeout(), DEFAULT_TIMEOUT);
        assert!(fa.copy_headers().is_empty());
        assert!(fa.forward_headers().is_empty());
        assert!(fa.cache_ttl().is_none());
    }

    #[test]
    fn all_keys() {
        let fa = build(
            "url = \"https://auth.internal:8443/check?x=1\"\ntimeout = \"750ms\"\n\
             copy_headers = [\"X-User\", \"x-roles\"]\n\
             forward_headers = [\"X-Tenant\", \"Cookie\", \"x-tenant\"]\ncache = \"30s\"\n",
        )
        .unwrap();
        assert_eq!(fa.timeout(), Duration::from_millis(750));
        assert_eq!(fa.copy_headers(), ["x-user", "x-roles"]);
        // Defaults listed again, and repeats, are sent once.
        assert_eq!(fa.forward_headers(), ["x-tenant"]);
        assert_eq!(fa.cache_ttl(), Some(Duration::from_secs(30)));
        assert!(
            build("url = \"http://a/\"\ncache = \"off\"")
                .unwrap()
                .cache_ttl()
                .is_none()
        );
    }

    #[test]
    fn errors_name_key_and_line() {
        let e = errors("timeout = \"1s\"\n");
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].key, "route[0].auth.forward_auth.url");
        assert!(e[0].message.contains("required"), "{e:?}");

        let e = errors("url = \"ftp://auth/\"\n");
        assert_eq!(
            (e[0].key.as_str(), e[0].line),
            ("route[0].auth.forward_auth.url", Some(10))
        );

        let e = errors(
            "url = \"http://auth/\"\ntimeout = \"soon\"\ncache = \"1x\"\n\
             copy_headers = [\"X-User\", \"bad header\", \"Upgrade\", \"x-user\"]\n\
             forward_headers = [\"Host\", \"X-Forwarded-For\", \"Connection\", \"ok\"]\n",
        );
        let got: Vec<(&str, Option<usize>)> = e.iter().map(|e| (e.key.as_str(), e.line)).collect();
        let k = |s: &str| format!("route[0].auth.forward_auth.{s}");
        assert_eq!(
            got,
            [
                (k("timeout").as_str(), Some(11)),
                (k("cache").as_str(), Some(12)),
                (k("copy_headers[1]").as_str(), Some(13)),
                (k("copy_headers[2]").as_str(), Some(13)),
                (k("copy_headers[3]").as_str(), Some(13)),
                (k("forward_headers[0]").as_str(), Some(14)),
                (k("forward_headers[1]").as_str(), Some(14)),
                (k("forward_headers[2]").as_str(), Some(14)),
            ],
            "{e:#?}"
        );

        let e = errors("url = \"http://auth/\"\nnope = 1\n");
        assert!(e[0].message.contains("unknown key \"nope\""), "{e:?}");
    }

    #[test]
    fn user_header() {
        let fa = build("url = \"http://auth/\"\n").unwrap();
        assert_eq!(fa.user_header, None);
        let fa = build("url = \"http://auth/\"\nuser_header = \" X-Auth-User \"\n").unwrap();
        assert_eq!(fa.user_header, Some(HeaderName::from_static("x-auth-user")));
        // Read from the answer: it need not be one of the headers copied to the backend.
        assert!(fa.copy_headers().is_empty());

        let refused = |value: &str, part: &str| {
            let e = errors(&format!("url = \"http://auth/\"\nuser_header = {value}\n"));
            assert_eq!(e.len(), 1, "{e:?}");
            assert_eq!(
                (e[0].key.as_str(), e[0].line),
                ("route[0].auth.forward_auth.user_header", Some(11))
            );
            assert!(e[0].message.contains(part), "{value}: {e:?}");
        };
        refused("\"X User\"", "\"X User\" is not a header name");
        refused("\"\"", "is not a header name");
        refused(
            "\"Content-Length\"",
            "content-length belongs to the answer's framing",
        );
        refused("\"Connection\"", "cannot name a user");
        refused("[\"X-User\"]", "expected a string, found an array");

        let e = errors("url = \"http://auth/\"\nuser_headr = \"X-User\"\n");
        assert_eq!(
            e[0].message,
            "unknown key \"user_headr\"; did you mean \"user_header\"?"
        );
    }

    #[test]
    fn ca_errors() {
        let e = errors("url = \"http://auth/\"\nca = \"ca.pem\"\n");
        assert_eq!(e[0].key, "route[0].auth.forward_auth.ca");
        assert!(e[0].message.contains("not https"), "{e:?}");
        let e = errors("url = \"https://auth/\"\nca = \"/nonexistent/ca.pem\"\n");
        assert_eq!(
            (e[0].key.as_str(), e[0].line),
            ("route[0].auth.forward_auth.ca", Some(11))
        );
        assert!(e[0].message.contains("/nonexistent/ca.pem"), "{e:?}");
    }
}
