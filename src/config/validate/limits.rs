//! `[limits]`'s path keys (`merge_slashes`, `escaped_slashes`: see `crate::path`), a route
//! path's canonical form, and `error_detail`.

use toml::Spanned;

use super::Validator;
use crate::config::file::SpStr;
use crate::config::file::{FileLimits, FileRoute};
use crate::config::{
    DEFAULT_ERROR_DETAIL, DEFAULT_ESCAPED_SLASHES, DEFAULT_MERGE_SLASHES, ErrorDetail,
};
use crate::path::{EscapedSlashes, PathRules, canonicalize, routing_form};

impl Validator<'_> {
    /// One of a few words, e.g. `"refuse"` or `"keep"`; an error naming them otherwise.
    pub(super) fn choice<T: Copy>(
        &mut self,
        key: &str,
        value: Option<&SpStr>,
        options: &[(&str, T)],
        default: T,
    ) -> T {
        let Some(value) = value else { return default };
        if let Some((_, v)) = options.iter().find(|(w, _)| *w == value.get_ref().as_str()) {
            return *v;
        }
        let words: Vec<String> = options.iter().map(|(w, _)| format!("{w:?}")).collect();
        self.err(
            key,
            Some(value.span()),
            format!(
                "unknown value {:?}: use {}",
                value.get_ref(),
                words.join(" or ")
            ),
        );
        default
    }

    /// `limits.error_detail`: where the details of a backend failure go.
    pub(super) fn error_detail(&mut self, limits: &FileLimits) -> ErrorDetail {
        self.choice(
            "limits.error_detail",
            limits.error_detail.as_ref(),
            &[("log", ErrorDetail::Log), ("client", ErrorDetail::Client)],
            DEFAULT_ERROR_DETAIL,
        )
    }

    pub(super) fn path_rules(&mut self, limits: &FileLimits) -> PathRules {
        let merge_slashes = limits
            .merge_slashes
            .as_ref()
            .map_or(DEFAULT_MERGE_SLASHES, |b| *b.get_ref());
        let escaped_slashes = self.choice(
            "limits.escaped_slashes",
            limits.escaped_slashes.as_ref(),
            &[
                ("refuse", EscapedSlashes::Refuse),
                ("keep", EscapedSlashes::Keep),
            ],
            DEFAULT_ESCAPED_SLASHES,
        );
        PathRules {
            merge_slashes,
            escaped_slashes,
        }
    }

    /// A route's path must be canonical and without parameters: requests are matched by
    /// their canonical path's routing form, so `/a/../b`, `//a` (slashes merged), `/%61` or
    /// `/a;x` would never match anything.
    pub(super) fn route_path(
        &mut self,
        key: &str,
        r: &Spanned<FileRoute>,
        path: &str,
        rules: &PathRules,
    ) {
        if path.is_empty() {
            return; // already reported
        }
        let span = r.get_ref().path.as_ref().map(|p| p.span());
        let problem = match canonicalize(path, rules) {
            Ok(c) if c.path == path && !path.contains(';') => return,
            Ok(c) => format!("write {:?}", routing_form(&c.path)),
            Err(e) => e.to_string(),
        };
        self.err(
            format!("{key}.path"),
            span,
            format!(
                "{path:?} never matches: requests are routed by their canonical path ({problem})"
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use crate::config::from_toml_str;
    use crate::path::{EscapedSlashes, PathRules};

    const BASE: &str = "[[listener]]\nlisten = \"127.0.0.1:0\"\n[[route]]\nname = \"r\"\npath = \"/\"\nbackends = [\"ws://127.0.0.1:1\"]\n";

    #[test]
    fn defaults_merge_and_refuse() {
        let c = from_toml_str(BASE).unwrap();
        assert_eq!(c.limits.path, PathRules::default());
        assert!(c.limits.path.merge_slashes);
        assert_eq!(c.limits.path.escaped_slashes, EscapedSlashes::Refuse);
    }

    #[test]
    fn both_keys_are_read() {
        let c = from_toml_str(&format!(
            "{BASE}[limits]\nmerge_slashes = false\nescaped_slashes = \"keep\"\n"
        ))
        .unwrap();
        assert!(!c.limits.path.merge_slashes);
        assert_eq!(c.limits.path.escaped_slashes, EscapedSlashes::Keep);
    }

    #[test]
    fn a_route_path_that_can_never_match_is_an_error() {
        let route = |path: &str, limits: &str| {
            from_toml_str(&format!(
                "[[listener]]\nlisten = \"127.0.0.1:0\"\n[[route]]\nname = \"r\"\npath = \"{path}\"\nbackends = [\"ws://127.0.0.1:1\"]\n{limits}"
            ))
        };
        for (path, hint) in [
            ("/a/../b", "write \"/b\""),
            ("//a", "write \"/a\""),
            ("/%61", "write \"/a\""),
            ("/a;x", "write \"/a\""),
            ("/a%2Fb", "encoded slash"),
        ] {
            let errors = route(path, "").unwrap_err();
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert_eq!(errors[0].key, "route[0].path");
            assert_eq!(errors[0].line, Some(5));
            assert!(
                errors[0].message.contains(hint),
                "{path}: {}",
                errors[0].message
            );
        }
        assert!(route("/chat/", "").is_ok());
        assert!(route("/files%2Fa", "[limits]\nescaped_slashes = \"keep\"\n").is_ok());
        assert!(route("//a", "[limits]\nmerge_slashes = false\n").is_ok());
    }

    #[test]
    fn an_unknown_value_names_key_and_line() {
        let errors =
            from_toml_str(&format!("{BASE}[limits]\nescaped_slashes = \"decode\"\n")).unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].key, "limits.escaped_slashes");
        assert_eq!(errors[0].line, Some(8));
        assert!(errors[0].message.contains("\"refuse\" or \"keep\""));
    }
}
