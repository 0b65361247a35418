//! `[admin]`: the admin listener's address, its bearer token (`token_env` or `token_file`,
//! read now, so a missing variable or file is an error with key and line) and `[admin.tls]`
//! (validated by the same function as a proxy listener's `tls`).
//!
//! The admin API can close sessions and drain backends, so two rules here are about who can
//! reach it: a non-loopback address needs a token, and a token must be long enough not to be
//! found by trying.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use toml::Spanned;

use super::Validator;
use super::listener::ListenerTls;
use crate::config::file::{FileAdmin, FileListener, FileTls};
use crate::config::{AdminConfig, AdminToken, MIN_ADMIN_TOKEN_BYTES};

/// What `token_env` / `token_file` gave.
enum Token {
    /// Neither key is set.
    Absent,
    /// A key is set but gave no usable token (the error is recorded).
    Invalid,
    Valid(AdminToken),
}

impl Validator<'_> {
    /// `[admin]`. `listeners` are the proxy's `[[listener]]` tables, whose addresses the admin
    /// listener may not take.
    pub(super) fn admin(
        &mut self,
        f: &Spanned<FileAdmin>,
        listeners: &[Spanned<FileListener>],
    ) -> Option<AdminConfig> {
        let a = f.get_ref();
        let token = self.admin_token(a);
        let tls = a.tls.as_ref().and_then(|t| self.admin_tls(t));
        let Some(listen) = &a.listen else {
            self.err(
                "admin.listen",
                Some(f.span()),
                "missing: the admin listener's address, e.g. \"127.0.0.1:9901\" (without [admin] there is no admin listener)",
            );
            return None;
        };
        let Ok(addr) = listen.get_ref().parse::<SocketAddr>() else {
            self.err(
                "admin.listen",
                Some(listen.span()),
                match super::listener::port_out_of_range(listen.get_ref()) {
                    Some(port) => format!("{port:?} is not a port number (0 to 65535)"),
                    None => format!(
                        "{:?} is not an IP address with a port, e.g. \"127.0.0.1:9901\"",
                        listen.get_ref()
                    ),
                },
            );
            return None;
        };
        if let Some((i, other)) = taken_by_listener(addr, listeners) {
            self.err(
                "admin.listen",
                Some(listen.span()),
                format!(
                    "{addr} is also listener[{i}]'s address ({other}): the admin listener needs a port of its own"
                ),
            );
        }
        if matches!(token, Token::Absent) && !is_loopback(addr.ip()) {
            self.err(
                "admin.listen",
                Some(listen.span()),
                format!(
                    "{addr} is not a loopback address, so a token is required (token_env or token_file): the admin API can close sessions and drain backends, so it must not be open to the network"
                ),
            );
        }
        Some(AdminConfig {
            addr,
            token: match token {
                Token::Valid(t) => Some(t),
                Token::Absent | Token::Invalid => None,
            },
            tls_watch: tls.as_ref().and_then(|t| t.watch),
            tls: tls.map(|t| t.listener),
            listen_line: Some(self.line(listen.span().start)),
        })
    }

    /// `token_env` or `token_file`, read now.
    fn admin_token(&mut self, a: &FileAdmin) -> Token {
        let (key, value, token) = match (&a.token_env, &a.token_file) {
            (None, None) => return Token::Absent,
            (Some(_), Some(file)) => {
                self.err(
                    "admin.token_file",
                    Some(file.span()),
                    "token_env is set too: the token comes from one of them",
                );
                return Token::Invalid;
            }
            (Some(env), None) => ("admin.token_env", env, token_from_env(env.get_ref().trim())),
            (None, Some(file)) => {
                let path = self.base.join(file.get_ref().trim());
                ("admin.token_file", file, token_from_file(&path))
            }
        };
        match token {
            Ok(t) => Token::Valid(t),
            Err(m) => {
                self.err(key, Some(value.span()), m);
                Token::Invalid
            }
        }
    }

    /// `[admin.tls]`: a listener's `tls` table, less the one key that only means something
    /// on a proxy listener.
    fn admin_tls(&mut self, t: &Spanned<FileTls>) -> Option<ListenerTls> {
        if let Some(h) = &t.get_ref().client_subject_header {
            self.err(
                "admin.tls.client_subject_header",
                Some(h.span()),
                "the admin listener has no backend to pass a certificate's subject to",
            );
            return None;
        }
        self.listener_tls("admin.tls", t, None)
    }
}

/// 127.0.0.0/8 and ::1 (also written as `::ffff:127.0.0.1`).
fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// The first proxy listener (index and address) whose address `addr` would share: the same
/// port on the same address, or on an unspecified one that covers it (`0.0.0.0` covers every
/// IPv4 address, `[::]` every address on a dual-stack host). Port 0 takes a free port, so it
/// meets no one. Unparsable listener addresses are the listeners' own errors.
fn taken_by_listener(
    addr: SocketAddr,
    listeners: &[Spanned<FileListener>],
) -> Option<(usize, SocketAddr)> {
    listeners.iter().enumerate().find_map(|(i, l)| {
        let other = l
            .get_ref()
            .listen
            .as_ref()?
            .get_ref()
            .parse::<SocketAddr>()
            .ok()?;
        super::listener::overlaps(addr, other).then_some((i, other))
    })
}

/// The token held by the environment variable `name`.
fn token_from_env(name: &str) -> Result<AdminToken, String> {
    if name.is_empty() {
        return Err("names no environment variable".into());
    }
    match std::env::var_os(name) {
        Some(value) => token(
            &format!("environment variable {name}"),
            value.as_encoded_bytes(),
        ),
        None => Err(format!("environment variable {name} is not set")),
    }
}

/// The token held by the file at `path`.
fn token_from_file(path: &Path) -> Result<AdminToken, String> {
    let bytes = crate::config::read_limited(path, crate::config::MAX_NAMED_FILE)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    token(&path.display().to_string(), &bytes)
}

/// The token in `raw`, read from `source` (named in the errors; the token never is).
/// Surrounding whitespace is not part of it: a file's trailing newline, a pasted space.
fn token(source: &str, raw: &[u8]) -> Result<AdminToken, String> {
    let t = raw.trim_ascii();
    if t.is_empty() {
        return Err(format!("{source} is empty"));
    }
    if !t.iter().all(u8::is_ascii_graphic) {
        return Err(format!(
            "{source} holds a space, a control character or a non-ASCII character: the token is sent in an `Authorization: Bearer` header, so it must be visible ASCII"
        ));
    }
    if t.len() < MIN_ADMIN_TOKEN_BYTES {
        return Err(format!(
            "the token in {source} is {} bytes: at least {MIN_ADMIN_TOKEN_BYTES} are needed, as a shorter token can be guessed (openssl rand -hex 32 writes a good one)",
            t.len()
        ));
    }
    let text: String = t.iter().copied().map(char::from).collect();
    Ok(AdminToken(text.into()))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::{Config, ConfigError, DEFAULT_TLS_WATCH_INTERVAL};
    use crate::test_support::temp_dir::TempDir;

    /// A config whose `[admin]` table holds `table`; its first key is on line [`FIRST`].
    const PREFIX: &str = "[[listener]]\nlisten = \"127.0.0.1:8080\"\n\n[[route]]\nname = \"r\"\npath = \"/\"\nbackends = [\"ws://127.0.0.1:9\"]\n\n[admin]\n";
    const FIRST: usize = 10;
    /// Long enough, visible ASCII.
    const TOKEN: &str = "0123456789abcdef-token";

    fn load(dir: &TempDir, table: &str) -> Result<Config, Vec<ConfigError>> {
        crate::config::from_toml_str_in(&format!("{PREFIX}{table}"), dir.path())
    }

    fn admin(dir: &TempDir, table: &str) -> AdminConfig {
        match load(dir, table) {
            Ok(c) => c.admin.expect("an admin listener"),
            Err(e) => panic!("config refused: {e:#?}\n{table}"),
        }
    }

    /// Asserts that `table` is refused with exactly one error, for `admin.{key}` on the
    /// table's `line`-th line (1 = the first key, 0 = the `[admin]` header), whose message
    /// holds every one of `parts`.
    #[track_caller]
    fn assert_refused(dir: &TempDir, table: &str, line: usize, key: &str, parts: &[&str]) {
        let errors = match load(dir, table) {
            Ok(_) => panic!("accepted:\n{table}"),
            Err(e) => e,
        };
        let want = (format!("admin.{key}"), Some(FIRST + line - 1));
        assert!(
            errors.len() == 1
                && (errors[0].key.clone(), errors[0].line) == want
                && parts.iter().all(|p| errors[0].message.contains(p)),
            "wanted one error {want:?} containing {parts:?}, got:\n{errors:#?}\n{table}"
        );
    }

    #[test]
    fn no_admin_table_no_admin_listener() {
        let config = crate::config::from_toml_str(PREFIX.trim_end_matches("[admin]\n")).unwrap();
        assert!(config.admin.is_none());
    }

    #[test]
    fn a_loopback_address_needs_no_token() {
        let dir = TempDir::new("admin");
        for listen in [
            "127.0.0.1:9901",
            "127.1.2.3:9901",
            "[::1]:9901",
            "[::ffff:127.0.0.1]:9901",
            "127.0.0.1:0",
        ] {
            let a = admin(&dir, &format!("listen = \"{listen}\"\n"));
            assert_eq!(a.addr, listen.parse().unwrap());
            assert!(a.token.is_none() && a.tls.is_none() && a.tls_watch.is_none());
        }
    }

    #[test]
    fn a_non_loopback_address_needs_a_token() {
        let dir = TempDir::new("admin");
        for listen in [
            "0.0.0.0:9901",
            "[::]:9901",
            "192.168.1.10:9901",
            "[::ffff:10.0.0.1]:9901",
        ] {
            assert_refused(
                &dir,
                &format!("listen = \"{listen}\"\n"),
                1,
                "listen",
                &[
                    "not a loopback address",
                    "token is required (token_env or token_file)",
                    "can close sessions and drain backends",
                    "must not be open to the network",
                ],
            );
        }
        dir.write("token", format!("  {TOKEN}\n\n"));
        let a = admin(&dir, "listen = \"0.0.0.0:9901\"\ntoken_file = \"token\"\n");
        assert_eq!(a.token, Some(AdminToken(TOKEN.into())));
        // Loopback with a token: write endpoints will ask for it.
        let a = admin(
            &dir,
            "listen = \"127.0.0.1:9901\"\ntoken_file = \"token\"\n",
        );
        assert!(a.token.is_some());
    }

    #[test]
    fn the_token_never_shows_in_debug_output() {
        let dir = TempDir::new("admin");
        dir.write("token", TOKEN);
        let config = load(&dir, "listen = \"0.0.0.0:9901\"\ntoken_file = \"token\"\n").unwrap();
        let shown = format!("{config:?}");
        assert!(shown.contains("AdminToken(<redacted>)"), "{shown}");
        assert!(!shown.contains(TOKEN), "{shown}");
    }

    /// A token that cannot be read or used is one error, on its key's line, never also
    /// "a token is required".
    #[test]
    fn token_errors_name_key_and_line() {
        let dir = TempDir::new("admin");
        dir.write("empty", "\n");
        dir.write("short", "fifteen-bytes!!\n");
        dir.write("spaced", "0123456789 abcdef 0123\n");
        dir.write("latin", "0123456789abcdéf0123\n");
        dir.write("token", TOKEN);
        let listen = "listen = \"0.0.0.0:9901\"\n";
        let refused = |table: &str, key: &str, parts: &[&str]| {
            assert_refused(&dir, &format!("{listen}{table}"), 2, key, parts)
        };
        refused(
            "token_file = \"missing\"\n",
            "token_file",
            &["cannot read", "missing"],
        );
        refused(
            "token_file = \"empty\"\n",
            "token_file",
            &["empty is empty"],
        );
        refused(
            "token_file = \"short\"\n",
            "token_file",
            &["is 15 bytes", "at least 16", "can be guessed"],
        );
        refused(
            "token_file = \"spaced\"\n",
            "token_file",
            &["visible ASCII"],
        );
        refused("token_file = \"latin\"\n", "token_file", &["visible ASCII"]);
        refused(
            "token_env = \"WSGATE_TEST_SURELY_UNSET_VARIABLE\"\n",
            "token_env",
            &["environment variable WSGATE_TEST_SURELY_UNSET_VARIABLE is not set"],
        );
        refused(
            "token_env = \" \"\n",
            "token_env",
            &["names no environment variable"],
        );
        assert_refused(
            &dir,
            &format!(
                "{listen}token_env = \"WSGATE_TEST_SURELY_UNSET_VARIABLE\"\ntoken_file = \"token\"\n"
            ),
            3,
            "token_file",
            &["token_env is set too"],
        );
    }

    #[test]
    fn token_text() {
        let ok = |raw: &str| token("src", raw.as_bytes()).map(|t| t.0.to_string());
        assert_eq!(ok(&format!("\t{TOKEN} \r\n")), Ok(TOKEN.to_string()));
        assert_eq!(ok("0123456789abcdef"), Ok("0123456789abcdef".to_string()));
        assert_eq!(ok(" \n"), Err("src is empty".to_string()));
        for bad in [
            "0123456789abcdef\u{7f}",
            "0123456789\0abcdef",
            "0123456789abcdef\u{e9}",
        ] {
            assert!(ok(bad).unwrap_err().contains("visible ASCII"), "{bad:?}");
        }
        let short = ok("0123456789abcde").unwrap_err();
        assert!(short.contains("the token in src is 15 bytes"), "{short}");
        assert!(
            !short.contains("0123"),
            "the token is never in a message: {short}"
        );
    }

    #[test]
    fn listen_errors() {
        let dir = TempDir::new("admin");
        dir.write("token", TOKEN);
        assert_refused(
            &dir,
            "token_file = \"token\"\n",
            0,
            "listen",
            &["missing", "\"127.0.0.1:9901\""],
        );
        assert_refused(
            &dir,
            "listen = \"localhost:9901\"\n",
            1,
            "listen",
            &["\"localhost:9901\" is not an IP address with a port"],
        );
        for taken in ["127.0.0.1:8080", "0.0.0.0:8080", "[::]:8080"] {
            assert_refused(
                &dir,
                &format!("listen = \"{taken}\"\ntoken_file = \"token\"\n"),
                1,
                "listen",
                &[
                    "listener[0]'s address (127.0.0.1:8080)",
                    "needs a port of its own",
                ],
            );
        }
        // Another address on the same port, or port 0 (a free port), is the admin's own.
        for free in ["127.0.0.2:8080", "[::1]:8080", "127.0.0.1:0"] {
            admin(&dir, &format!("listen = \"{free}\"\n"));
        }
    }

    #[test]
    fn a_wildcard_proxy_listener_covers_its_family() {
        let text = |proxy: &str, admin: &str| {
            format!(
                "[[listener]]\nlisten = \"127.0.0.1:1\"\n[[listener]]\nlisten = \"{proxy}\"\n\
                 [[route]]\nname = \"r\"\npath = \"/\"\nbackends = [\"ws://127.0.0.1:9\"]\n\
                 [admin]\nlisten = \"{admin}\"\n"
            )
        };
        let errors =
            crate::config::from_toml_str(&text("0.0.0.0:9901", "127.0.0.1:9901")).unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert!(
            errors[0]
                .message
                .contains("listener[1]'s address (0.0.0.0:9901)")
        );
        assert!(crate::config::from_toml_str(&text("[::]:9901", "127.0.0.1:9901")).is_err());
        assert!(crate::config::from_toml_str(&text("0.0.0.0:9901", "[::1]:9901")).is_ok());
    }

    #[test]
    fn admin_tls_is_a_listeners_tls() {
        let dir = TempDir::new("admin");
        let (cert, key) = crate::tls::dev_certificate(&["localhost".into()]).unwrap();
        dir.write("cert.pem", &cert);
        dir.write("key.pem", &key);
        let listen = "listen = \"127.0.0.1:9901\"\n[admin.tls]\n";
        let a = admin(
            &dir,
            &format!("{listen}cert = \"cert.pem\"\nkey = \"key.pem\"\n"),
        );
        assert!(a.tls.is_some());
        assert_eq!(a.tls_watch, Some(DEFAULT_TLS_WATCH_INTERVAL));
        let a = admin(
            &dir,
            &format!(
                "{listen}cert = \"cert.pem\"\nkey = \"key.pem\"\nwatch_interval = \"off\"\n\
                 client_ca = \"cert.pem\"\nclient_auth = \"required\"\n"
            ),
        );
        assert!(a.tls.is_some() && a.tls_watch.is_none());
        let a = admin(
            &dir,
            &format!("{listen}cert = \"cert.pem\"\nkey = \"key.pem\"\nwatch_interval = \"1m\"\n"),
        );
        assert_eq!(a.tls_watch, Some(Duration::from_secs(60)));

        let refused = |table: &str, line: usize, key: &str, part: &str| {
            assert_refused(&dir, &format!("{listen}{table}"), line, key, &[part])
        };
        refused(
            "cert = \"cert.pem\"\n",
            2,
            "tls.key",
            "missing: the private key file",
        );
        refused(
            "cert = \"nope.pem\"\nkey = \"key.pem\"\n",
            3,
            "tls.cert",
            "nope.pem",
        );
        refused(
            "cert = \"cert.pem\"\nkey = \"key.pem\"\nclient_auth = \"required\"\n",
            5,
            "tls.client_auth",
            "needs client_ca",
        );
        refused(
            "cert = \"cert.pem\"\nkey = \"key.pem\"\nclient_ca = \"cert.pem\"\n\
             client_subject_header = \"X-Subject\"\n",
            6,
            "tls.client_subject_header",
            "no backend",
        );
        refused(
            "cert = \"cert.pem\"\nkey = \"key.pem\"\nwatch_interval = \"often\"\n",
            5,
            "tls.watch_interval",
            "often",
        );
    }

    /// Misspelt keys in `[admin]` and `[admin.tls]` get the parser's "did you mean", and the
    /// key they were meant to be is not reported missing as well.
    #[test]
    fn unknown_keys_get_a_did_you_mean() {
        let dir = TempDir::new("admin");
        assert_refused(
            &dir,
            "listn = \"127.0.0.1:9901\"\n",
            1,
            "listn",
            &["unknown key \"listn\"; did you mean \"listen\"?"],
        );
        assert_refused(
            &dir,
            "listen = \"127.0.0.1:9901\"\ntoken_evn = \"T\"\n",
            2,
            "token_evn",
            &["did you mean \"token_env\"?"],
        );
        assert_refused(
            &dir,
            "listen = \"127.0.0.1:9901\"\npassword = \"T\"\n",
            2,
            "password",
            &["expected one of: listen, token_env, token_file, tls"],
        );
        assert_refused(
            &dir,
            "listen = \"127.0.0.1:9901\"\n[admin.tls]\ncrt = \"c.pem\"\n",
            3,
            "tls.crt",
            &["did you mean \"cert\"?"],
        );
        assert_refused(&dir, "listen = 9901\n", 1, "listen", &["expected a string"]);
    }
}
