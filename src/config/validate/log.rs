//! `[log]`: the level of the "session open" record and the refusal lines' rate limit.

use super::Validator;
use crate::config::file::FileLog;
use crate::config::{LogConfig, LogLevel};

impl Validator<'_> {
    /// `[log]`; its absence means the defaults.
    pub(super) fn log(&mut self, f: Option<&FileLog>) -> LogConfig {
        let mut log = LogConfig::default();
        let Some(f) = f else { return log };
        if let Some(s) = &f.session_open {
            match s.get_ref().trim() {
                "info" => log.session_open = LogLevel::Info,
                "debug" => log.session_open = LogLevel::Debug,
                "off" => log.session_open = LogLevel::Off,
                other => self.err(
                    "log.session_open",
                    Some(s.span()),
                    format!("{other:?}: use \"info\", \"debug\" or \"off\""),
                ),
            }
        }
        if let Some(n) = &f.refusals_per_second {
            let key = "log.refusals_per_second";
            match u32::try_from(*n.get_ref()) {
                Ok(per_second) if per_second >= 1 => log.refusals_per_second = per_second,
                _ if *n.get_ref() < 1 => self.err(
                    key,
                    Some(n.span()),
                    "must be at least 1: the refusal lines written a second for each reason before similar ones are only counted (0 would hide every refusal)",
                ),
                _ => self.err(key, Some(n.span()), format!("must be at most {}", u32::MAX)),
            }
        }
        log
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{
        ConfigError, DEFAULT_REFUSALS_PER_SECOND, DEFAULT_SESSION_OPEN_LOG, LogConfig, LogLevel,
    };

    /// A config whose `[log]` table holds `table`; its first key is on line [`FIRST`].
    fn load(table: &str) -> Result<LogConfig, Vec<ConfigError>> {
        let text = format!(
            "[[listener]]\nlisten = \"127.0.0.1:0\"\n[[route]]\nname = \"r\"\npath = \"/\"\n\
             backends = [\"ws://127.0.0.1:9\"]\n[log]\n{table}"
        );
        crate::config::from_toml_str(&text).map(|c| c.log)
    }
    const FIRST: usize = 8;

    /// The one error `table` gets: (key, line, message).
    fn refused(table: &str) -> (String, Option<usize>, String) {
        match load(table) {
            Ok(log) => panic!("accepted: {log:?}\n{table}"),
            Err(e) if e.len() == 1 => (e[0].key.clone(), e[0].line, e[0].message.clone()),
            Err(e) => panic!("more than one error: {e:#?}"),
        }
    }

    #[test]
    fn defaults_and_values() {
        assert_eq!(load("").unwrap(), LogConfig::default());
        assert_eq!(DEFAULT_SESSION_OPEN_LOG, LogLevel::Info);
        assert_eq!(DEFAULT_REFUSALS_PER_SECOND, 10);
        for (word, level) in [
            ("info", LogLevel::Info),
            ("debug", LogLevel::Debug),
            ("off", LogLevel::Off),
        ] {
            let log = load(&format!("session_open = \"{word}\"\n")).unwrap();
            assert_eq!(log.session_open, level);
            assert_eq!(log.refusals_per_second, DEFAULT_REFUSALS_PER_SECOND);
        }
        for n in [1, 250, u32::MAX] {
            let log = load(&format!("refusals_per_second = {n}\n")).unwrap();
            assert_eq!(log.refusals_per_second, n);
            assert_eq!(log.session_open, DEFAULT_SESSION_OPEN_LOG);
        }
    }

    #[test]
    fn errors_name_key_and_line() {
        let (key, line, message) = refused("\nsession_open = \"warn\"\n");
        assert_eq!((key.as_str(), line), ("log.session_open", Some(FIRST + 1)));
        assert_eq!(message, "\"warn\": use \"info\", \"debug\" or \"off\"");

        for n in ["0", "-3"] {
            let (key, line, message) = refused(&format!("refusals_per_second = {n}\n"));
            assert_eq!(
                (key.as_str(), line),
                ("log.refusals_per_second", Some(FIRST))
            );
            assert!(message.starts_with("must be at least 1"), "{message}");
            assert!(message.contains("0 would hide every refusal"), "{message}");
        }
        let (_, _, message) = refused("refusals_per_second = 4294967296\n");
        assert_eq!(message, "must be at most 4294967295");

        let (key, line, message) = refused("refusals_per_second = \"10\"\n");
        assert_eq!(
            (key.as_str(), line),
            ("log.refusals_per_second", Some(FIRST))
        );
        assert!(message.starts_with("expected an integer"), "{message}");

        let (key, line, message) = refused("session_opn = \"off\"\n");
        assert_eq!((key.as_str(), line), ("log.session_opn", Some(FIRST)));
        assert_eq!(
            message,
            "unknown key \"session_opn\"; did you mean \"session_open\"?"
        );
        let (_, _, message) = refused("level = \"debug\"\n");
        assert_eq!(
            message,
            "unknown key \"level\"; expected one of: session_open, refusals_per_second"
        );
    }
}
