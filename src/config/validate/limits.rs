//! `[limits]`'s path keys: `merge_slashes` and `escaped_slashes` (see `crate::path`).

use super::Validator;
use crate::config::file::FileLimits;
use crate::config::{DEFAULT_ESCAPED_SLASHES, DEFAULT_MERGE_SLASHES};
use crate::path::{EscapedSlashes, PathRules};

impl Validator<'_> {
    pub(super) fn path_rules(&mut self, limits: &FileLimits) -> PathRules {
        let merge_slashes = limits
            .merge_slashes
            .as_ref()
            .map_or(DEFAULT_MERGE_SLASHES, |b| *b.get_ref());
        let escaped_slashes = match limits.escaped_slashes.as_ref() {
            None => DEFAULT_ESCAPED_SLASHES,
            Some(s) => match s.get_ref().as_str() {
                "refuse" => EscapedSlashes::Refuse,
                "keep" => EscapedSlashes::Keep,
                other => {
                    self.err(
                        "limits.escaped_slashes",
                        Some(s.span()),
                        format!("unknown value {other:?}: use \"refuse\" or \"keep\""),
                    );
                    DEFAULT_ESCAPED_SLASHES
                }
            },
        };
        PathRules {
            merge_slashes,
            escaped_slashes,
        }
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
    fn an_unknown_value_names_key_and_line() {
        let errors = from_toml_str(&format!("{BASE}[limits]\nescaped_slashes = \"decode\"\n"))
            .unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].key, "limits.escaped_slashes");
        assert_eq!(errors[0].line, Some(8));
        assert!(errors[0].message.contains("\"refuse\" or \"keep\""));
    }
}
