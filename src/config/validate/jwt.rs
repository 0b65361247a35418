//! `[route.auth.jwt]`: the key source (one of `secret_env`, `secret_file`, `public_key`,
//! `jwks_file`, `jwks_url`), the algorithms it may verify, and the claim rules, built into a
//! [`JwtVerifier`] through `crate::policy::jwt`'s typed constructors. Which algorithms a key
//! takes is settled here, against what the file lists, so that each misfit names its line.

use std::ops::Range;
use std::str::FromStr;
use std::sync::Arc;

use jsonwebtoken::{Algorithm, AlgorithmFamily};
use toml::Spanned;

use super::{Validator, entries};
use crate::config::file::{FileJwt, OneOrMany, SpStr};
use crate::http_client::HttpClient;
use crate::policy::TokenSource;
use crate::policy::jwt::{
    ALL_ALGORITHMS, DEFAULT_JWKS_REFRESH, DEFAULT_LEEWAY, JwtRules, JwtVerifier, Key, Keys,
    alg_list, alg_name, parse_jwks, restrict, secret_from_env, secret_from_file,
};

/// Sessions outlive their token by default: ending them is a change of behaviour a client
/// must be ready for (reconnecting with a fresh token on close 1008), so a route opts in.
const DEFAULT_EXPIRE_SESSIONS: bool = false;

/// The one key source a `[route.auth.jwt]` table names.
enum Source<'f> {
    SecretEnv(&'f SpStr),
    SecretFile(&'f SpStr),
    PublicKey(&'f SpStr),
    JwksFile(&'f SpStr),
    JwksUrl(&'f SpStr),
}

impl<'f> Source<'f> {
    /// Every key source the table sets, in the order the keys are documented.
    fn all(j: &'f FileJwt) -> Vec<Source<'f>> {
        let mut out = Vec::new();
        out.extend(j.secret_env.as_ref().map(Source::SecretEnv));
        out.extend(j.secret_file.as_ref().map(Source::SecretFile));
        out.extend(j.public_key.as_ref().map(Source::PublicKey));
        out.extend(j.jwks_file.as_ref().map(Source::JwksFile));
        out.extend(j.jwks_url.as_ref().map(Source::JwksUrl));
        out
    }

    /// The key's name in the table.
    fn name(&self) -> &'static str {
        match self {
            Source::SecretEnv(_) => "secret_env",
            Source::SecretFile(_) => "secret_file",
            Source::PublicKey(_) => "public_key",
            Source::JwksFile(_) => "jwks_file",
            Source::JwksUrl(_) => "jwks_url",
        }
    }

    fn value(&self) -> &'f SpStr {
        match self {
            Source::SecretEnv(v)
            | Source::SecretFile(v)
            | Source::PublicKey(v)
            | Source::JwksFile(v)
            | Source::JwksUrl(v) => v,
        }
    }
}

/// `[route.auth.jwt]`: reads key files now so that errors name key and line, and builds the
/// route's verifier.
pub(super) fn verifier(
    v: &mut Validator<'_>,
    key: &str,
    f: &Spanned<FileJwt>,
) -> Option<Arc<JwtVerifier>> {
    let j = f.get_ref();
    let sources = token_sources(v, &format!("{key}.from"), j.from.as_ref());
    let k = |name: &str| format!("{key}.{name}");

    let configured = algorithms(v, key, j.algorithms.as_ref());

    let given = Source::all(j);
    if !matches!(given.first(), Some(Source::JwksUrl(_))) {
        for (name, value) in [("jwks_ca", &j.jwks_ca), ("jwks_refresh", &j.jwks_refresh)] {
            if let Some(value) = value {
                v.err(k(name), Some(value.span()), "only used with jwks_url");
            }
        }
    }
    let built = keys(v, key, f, &given, configured.as_deref());

    let leeway = v
        .optional_duration(&k("leeway"), j.leeway.as_ref(), Some(DEFAULT_LEEWAY))
        .unwrap_or_default();
    let issuers = string_list(v, &k("issuer"), j.issuer.as_ref(), "issuer");
    let audiences = string_list(v, &k("audience"), j.audience.as_ref(), "audience");
    let mut required_claims = Vec::new();
    for (i, c) in entries(j.required_claims.as_ref()).iter().enumerate() {
        let name = c.get_ref().trim();
        if name.is_empty() {
            v.err(
                format!("{key}.required_claims[{i}]"),
                Some(c.span()),
                "must not be empty",
            );
        } else if !required_claims.iter().any(|n| n == name) {
            required_claims.push(name.to_string());
        }
    }
    let claims = super::jwt_claims::rules(v, &k("claims"), j.claims.as_ref());
    let (keys, allowed) = built?;
    let rules = JwtRules {
        sources,
        algorithms: allowed,
        leeway,
        issuers,
        audiences,
        required_claims,
        claims,
        expire_sessions: j.expire_sessions.unwrap_or(DEFAULT_EXPIRE_SESSIONS),
        require_exp: j.require_exp.as_ref().is_none_or(|r| *r.get_ref()),
        forward_token: j.forward_token.unwrap_or(false),
    };
    Some(Arc::new(JwtVerifier::new(keys, rules)))
}

/// The route's keys from its one key source, and the algorithms tokens may name; `None`
/// after reporting why there are none (the rest of the table is still checked by the
/// caller, so one run reports every error).
fn keys(
    v: &mut Validator<'_>,
    key: &str,
    f: &Spanned<FileJwt>,
    given: &[Source<'_>],
    configured: Option<&[Algorithm]>,
) -> Option<(Keys, Option<Vec<Algorithm>>)> {
    let j = f.get_ref();
    let k = |name: &str| format!("{key}.{name}");
    let source = match given {
        [] => {
            v.err(
                key,
                Some(f.span()),
                "needs a key: one of secret_env, secret_file, public_key, jwks_file, jwks_url",
            );
            return None;
        }
        [one] => one,
        [first, second, ..] => {
            v.err(
                k(second.name()),
                Some(second.value().span()),
                format!(
                    "one key source per route: {} and {} are both set",
                    first.name(),
                    second.name()
                ),
            );
            return None;
        }
    };
    let skey = k(source.name());
    let sspan = source.value().span();
    let svalue = source.value().get_ref().trim();

    // Each key source yields its keys and the algorithms tokens may name.
    let built: (Keys, Option<Vec<Algorithm>>) = match source {
        Source::SecretEnv(_) | Source::SecretFile(_) => {
            let secret = if let Source::SecretEnv(_) = source {
                secret_from_env(svalue, std::env::var_os(svalue))
            } else {
                secret_from_file(&v.base.join(svalue))
            };
            let secret = match secret {
                Ok(s) => s,
                Err(m) => {
                    v.err(skey, Some(sspan), m);
                    return None;
                }
            };
            let hmac = AlgorithmFamily::Hmac.algorithms();
            let algs = fit_algorithms(
                v,
                key,
                j.algorithms.as_ref(),
                configured,
                hmac,
                "an HMAC secret",
            )
            // None of the listed ones fits (each is an error above): HS256 for the rest.
            .filter(|algs| !algs.is_empty())
            .unwrap_or_else(|| vec![Algorithm::HS256]);
            // RFC 7518 §3.2: a key at least as long as the hash output.
            let needed = algs
                .iter()
                .map(|a| match a {
                    Algorithm::HS384 => 48,
                    Algorithm::HS512 => 64,
                    _ => 32,
                })
                .max()
                .unwrap_or(32);
            if secret.len() < needed {
                tracing::warn!(
                    key = %skey,
                    bytes = secret.len(),
                    needed,
                    "the HMAC secret is short for {}: a short secret can be guessed offline from any one token",
                    alg_list(&algs)
                );
            }
            let key = Key::hmac(&secret, algs.clone());
            (Keys::Static(vec![key]), Some(algs))
        }
        Source::PublicKey(_) => {
            let (mut pk, what) = match Key::from_pem_file(&v.base.join(svalue)) {
                Ok(k) => k,
                Err(m) => {
                    v.err(skey, Some(sspan), m);
                    return None;
                }
            };
            let usable = pk.algorithms().to_vec();
            let algs = fit_algorithms(
                v,
                key,
                j.algorithms.as_ref(),
                configured,
                &usable,
                &format!("the {what} key in {svalue}"),
            )
            .unwrap_or(usable);
            pk.set_algorithms(algs.clone());
            (Keys::Static(vec![pk]), Some(algs))
        }
        Source::JwksFile(_) => {
            let path = v.base.join(svalue);
            let parsed = crate::config::read_limited(&path, crate::config::MAX_NAMED_FILE)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))
                .and_then(|b| parse_jwks(&b, true).map_err(|m| format!("{}: {m}", path.display())));
            let parsed = match parsed {
                Ok(p) => p,
                Err(m) => {
                    v.err(skey, Some(sspan), m);
                    return None;
                }
            };
            for (which, why) in &parsed.skipped {
                tracing::warn!(key = %skey, file = %path.display(), jwk = %which, reason = %why, "JWKS key skipped");
            }
            let hmac = parsed.keys.iter().filter(|k| k.is_hmac()).count();
            if hmac > 0 && hmac < parsed.keys.len() {
                v.err(
                    &skey,
                    Some(sspan),
                    format!(
                        "{}: mixes shared secrets (\"kty\": \"oct\") with public keys; a route takes one or the other",
                        path.display()
                    ),
                );
                return None;
            }
            if let (Some(list), Some(conf)) = (&j.algorithms, configured) {
                for (i, alg) in conf.iter().enumerate() {
                    if !parsed.keys.iter().any(|k| k.algorithms().contains(alg)) {
                        v.err(
                            format!("{key}.algorithms[{i}]"),
                            Some(item_span(list, i)),
                            format!("{}: no key in {svalue} can verify it", alg_name(*alg)),
                        );
                    }
                }
            }
            let keys = restrict(parsed.keys, configured);
            if keys.is_empty() {
                v.err(
                    skey,
                    Some(sspan),
                    format!("{}: no usable key in the set", path.display()),
                );
                return None;
            }
            (Keys::Static(keys), configured.map(<[Algorithm]>::to_vec))
        }
        Source::JwksUrl(_) => {
            let url = match crate::http_client::parse_http_url(svalue) {
                Ok(u) => u,
                Err(m) => {
                    v.err(skey, Some(sspan), m);
                    return None;
                }
            };
            if let (Some(list), Some(conf)) = (&j.algorithms, configured) {
                for (i, alg) in conf.iter().enumerate() {
                    if alg.family() == AlgorithmFamily::Hmac {
                        v.err(
                            format!("{key}.algorithms[{i}]"),
                            Some(item_span(list, i)),
                            format!(
                                "{} needs a shared secret (secret_env or secret_file); a key set fetched from a URL holds public keys",
                                alg_name(*alg)
                            ),
                        );
                    }
                }
            }
            let ca = j.jwks_ca.as_ref().and_then(|ca| {
                if url.scheme_str() != Some("https") {
                    v.err(
                        k("jwks_ca"),
                        Some(ca.span()),
                        "only used with an https:// jwks_url",
                    );
                    return None;
                }
                Some((v.base.join(ca.get_ref().trim()), ca.span()))
            });
            let tls = match crate::http_client::tls_for(&url, ca.as_ref().map(|(p, _)| p.as_path()))
            {
                Ok(t) => t,
                Err(m) => {
                    match &ca {
                        Some((_, span)) => v.err(k("jwks_ca"), Some(span.clone()), m),
                        None => v.err(skey, Some(sspan), m),
                    }
                    return None;
                }
            };
            let refresh = v.duration(
                &k("jwks_refresh"),
                j.jwks_refresh.as_ref(),
                DEFAULT_JWKS_REFRESH,
            );
            let configured = configured.map(<[Algorithm]>::to_vec);
            let keys = Keys::remote(url, HttpClient::new(tls), refresh, configured.clone());
            (keys, configured)
        }
    };
    Some(built)
}

/// Token sources from a `from = [...]` list; without one, [`JwtRules`]'s default.
fn token_sources(
    v: &mut Validator<'_>,
    key: &str,
    from: Option<&Spanned<Vec<SpStr>>>,
) -> Vec<TokenSource> {
    let Some(from) = from else {
        return JwtRules::default().sources;
    };
    if from.get_ref().is_empty() {
        v.err(
            key,
            Some(from.span()),
            "must name at least one token source",
        );
    }
    let mut out = Vec::new();
    for (i, s) in from.get_ref().iter().enumerate() {
        match TokenSource::parse(s.get_ref().trim()) {
            Ok(t) => out.push(t),
            Err(m) => v.err(format!("{key}[{i}]"), Some(s.span()), m),
        }
    }
    out
}

fn item_span(list: &Spanned<Vec<SpStr>>, i: usize) -> Range<usize> {
    list.get_ref()
        .get(i)
        .map_or_else(|| list.span(), |s| s.span())
}

/// `algorithms = [...]`: known names, not HMAC and public-key algorithms together.
fn algorithms(
    v: &mut Validator<'_>,
    key: &str,
    list: Option<&Spanned<Vec<SpStr>>>,
) -> Option<Vec<Algorithm>> {
    let list = list?;
    if list.get_ref().is_empty() {
        v.err(
            format!("{key}.algorithms"),
            Some(list.span()),
            "must list at least one algorithm (or remove the key to infer them from the key)",
        );
        return None;
    }
    let mut out: Vec<Algorithm> = Vec::new();
    let mut ok = true;
    for (i, s) in list.get_ref().iter().enumerate() {
        let name = s.get_ref().trim();
        match Algorithm::from_str(name) {
            Ok(a) if !out.contains(&a) => out.push(a),
            Ok(_) => {}
            Err(_) => {
                ok = false;
                let all = alg_list(&ALL_ALGORITHMS);
                let msg = if name.eq_ignore_ascii_case("none") {
                    format!("unsigned tokens are never accepted; use one of {all}")
                } else {
                    format!("unknown algorithm {name:?}: use one of {all}")
                };
                v.err(format!("{key}.algorithms[{i}]"), Some(s.span()), msg);
            }
        }
    }
    let hmac: Vec<Algorithm> = out
        .iter()
        .copied()
        .filter(|a| a.family() == AlgorithmFamily::Hmac)
        .collect();
    if !hmac.is_empty() && hmac.len() < out.len() {
        let public: Vec<Algorithm> = out
            .iter()
            .copied()
            .filter(|a| a.family() != AlgorithmFamily::Hmac)
            .collect();
        v.err(
            format!("{key}.algorithms"),
            Some(list.span()),
            format!(
                "mixes HMAC ({}) with public-key algorithms ({}): a token could then be checked with a public key as its HMAC secret",
                alg_list(&hmac),
                alg_list(&public)
            ),
        );
        return None;
    }
    (ok && !out.is_empty()).then_some(out)
}

/// The configured algorithms that `usable` (the key's) contains; an error for each other.
/// `None` when none were configured.
fn fit_algorithms(
    v: &mut Validator<'_>,
    key: &str,
    list: Option<&Spanned<Vec<SpStr>>>,
    configured: Option<&[Algorithm]>,
    usable: &[Algorithm],
    what: &str,
) -> Option<Vec<Algorithm>> {
    let (list, configured) = (list?, configured?);
    let mut out = Vec::new();
    for (i, s) in list.get_ref().iter().enumerate() {
        let Ok(alg) = Algorithm::from_str(s.get_ref().trim()) else {
            continue;
        };
        if usable.contains(&alg) {
            if !out.contains(&alg) {
                out.push(alg);
            }
        } else if configured.contains(&alg) {
            v.err(
                format!("{key}.algorithms[{i}]"),
                Some(s.span()),
                format!(
                    "{} is not usable with {what} (it takes {})",
                    alg_name(alg),
                    alg_list(usable)
                ),
            );
        }
    }
    Some(out)
}

/// `issuer` / `audience`: a string or a list of non-empty strings.
fn string_list(
    v: &mut Validator<'_>,
    key: &str,
    value: Option<&Spanned<OneOrMany>>,
    what: &str,
) -> Option<Vec<String>> {
    let value = value?;
    let list: Vec<String> = match value.get_ref() {
        OneOrMany::One(s) => vec![s.clone()],
        OneOrMany::Many(l) => l.clone(),
    };
    if list.is_empty() {
        v.err(
            key,
            Some(value.span()),
            format!("must name at least one {what} (or remove the key)"),
        );
        return None;
    }
    if list.iter().any(|s| s.trim().is_empty()) {
        v.err(key, Some(value.span()), format!("an empty {what}"));
        return None;
    }
    Some(list)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigError;
    use crate::policy::jwt::tests::{SECRET, ed25519, p256, p384, rsa};
    use crate::test_support::temp_dir::TempDir;

    /// The config around a `[route.auth.jwt]` table; its first key is on line [`FIRST`].
    const PREFIX: &str = "[[listener]]\nlisten = \"127.0.0.1:0\"\n\n[[route]]\nname = \"r\"\npath = \"/\"\nbackends = [\"ws://127.0.0.1:9\"]\n\n[route.auth.jwt]\n";
    const FIRST: usize = 10;
    const KEY: &str = "route[0].auth.jwt";

    fn load(dir: &TempDir, table: &str) -> Result<crate::config::Config, Vec<ConfigError>> {
        crate::config::from_toml_str_in(&format!("{PREFIX}{table}"), dir.path())
    }

    fn verifier(dir: &TempDir, table: &str) -> Arc<JwtVerifier> {
        match load(dir, table) {
            Ok(c) => c.routes[0].policy.rules().jwt.clone().expect("a verifier"),
            Err(e) => panic!("config refused: {e:#?}\n{table}"),
        }
    }

    /// Asserts that the table is refused with an error on its `line`-th line (1 = first key)
    /// for `key` (relative to the jwt table), whose message contains `part`.
    fn assert_refused(dir: &TempDir, table: &str, line: usize, key: &str, part: &str) {
        let errors = match load(dir, table) {
            Ok(_) => panic!("accepted:\n{table}"),
            Err(e) => e,
        };
        let full = if key.is_empty() {
            KEY.to_string()
        } else {
            format!("{KEY}.{key}")
        };
        assert!(
            errors.iter().any(|e| e.key == full
                && e.line == Some(FIRST + line - 1)
                && e.message.contains(part)),
            "no error for {full} at line {} containing {part:?}:\n{errors:#?}\n{table}",
            FIRST + line - 1
        );
    }

    /// A key source that yields no key does not hide the table's other errors: one run of
    /// `wsgate check` reports them all. The rest of the table used to go unchecked.
    #[test]
    fn a_failed_key_source_leaves_the_other_errors_reported() {
        let dir = TempDir::new("jwt-keys-and-more");
        for source in [
            "secret_env = \"WSGATE_TEST_SURELY_UNSET_VARIABLE\"\n",
            "secret_file = \"missing\"\n",
            "",
        ] {
            let table = format!("{source}leeway = \"abc\"\nrequired_claims = [\"\"]\nissuer = 5\n");
            let Err(errors) = load(&dir, &table) else {
                panic!("accepted:\n{table}");
            };
            let line = FIRST + usize::from(!source.is_empty());
            for (key, at) in [("leeway", line), ("required_claims[0]", line + 1)] {
                assert!(
                    errors
                        .iter()
                        .any(|e| e.key == format!("{KEY}.{key}") && e.line == Some(at)),
                    "{key} not reported:\n{errors:#?}\n{table}"
                );
            }
        }
    }

    #[test]
    fn config_errors_name_key_and_line() {
        let dir = TempDir::new("jwt");
        dir.write("secret", SECRET);
        dir.write("p256.pem", &p256().public);
        dir.write("private.pem", &p256().private);
        dir.write("notes.txt", "nothing here\n");
        dir.write("bad.json", "{\"keys\": 1}");

        assert_refused(&dir, "leeway = \"5s\"\n", 0, "", "needs a key");
        assert_refused(
            &dir,
            "secret_file = \"secret\"\npublic_key = \"p256.pem\"\n",
            2,
            "public_key",
            "one key source per route",
        );
        assert_refused(
            &dir,
            "secret_env = \"WSGATE_TEST_SURELY_UNSET_VARIABLE\"\n",
            1,
            "secret_env",
            "environment variable WSGATE_TEST_SURELY_UNSET_VARIABLE is not set",
        );
        assert_refused(
            &dir,
            "secret_file = \"missing\"\n",
            1,
            "secret_file",
            "cannot read",
        );
        assert_refused(
            &dir,
            "public_key = \"missing.pem\"\n",
            1,
            "public_key",
            "cannot read",
        );
        assert_refused(
            &dir,
            "public_key = \"notes.txt\"\n",
            1,
            "public_key",
            "no public key in the file",
        );
        assert_refused(
            &dir,
            "public_key = \"private.pem\"\n",
            1,
            "public_key",
            "holds a private key",
        );
        assert_refused(
            &dir,
            "secret_file = \"secret\"\nalgorithms = [\"HS256\", \"XS1\"]\n",
            2,
            "algorithms[1]",
            "unknown algorithm \"XS1\"",
        );
        assert_refused(
            &dir,
            "secret_file = \"secret\"\nalgorithms = [\"none\"]\n",
            2,
            "algorithms[0]",
            "unsigned tokens are never accepted",
        );
        assert_refused(
            &dir,
            "public_key = \"p256.pem\"\nalgorithms = [\"HS256\", \"ES256\"]\n",
            2,
            "algorithms",
            "mixes HMAC (HS256) with public-key algorithms (ES256)",
        );
        assert_refused(
            &dir,
            "secret_file = \"secret\"\nalgorithms = [\"RS256\"]\n",
            2,
            "algorithms[0]",
            "RS256 is not usable with an HMAC secret",
        );
        assert_refused(
            &dir,
            "public_key = \"p256.pem\"\nalgorithms = [\"ES384\"]\n",
            2,
            "algorithms[0]",
            "ES384 is not usable with the EC P-256 key",
        );
        assert_refused(
            &dir,
            "jwks_file = \"bad.json\"\n",
            1,
            "jwks_file",
            "not a JWKS document",
        );
        assert_refused(
            &dir,
            "jwks_url = \"ftp://keys.example/jwks\"\n",
            1,
            "jwks_url",
            "must start with http:// or https://",
        );
        assert_refused(
            &dir,
            "jwks_url = \"http://keys.example/jwks\"\njwks_ca = \"ca.pem\"\n",
            2,
            "jwks_ca",
            "only used with an https:// jwks_url",
        );
        assert_refused(
            &dir,
            "jwks_url = \"https://keys.example/jwks\"\njwks_ca = \"missing-ca.pem\"\n",
            2,
            "jwks_ca",
            "cannot read",
        );
        assert_refused(
            &dir,
            "jwks_url = \"https://keys.example/jwks\"\nalgorithms = [\"HS256\"]\n",
            2,
            "algorithms[0]",
            "needs a shared secret",
        );
        assert_refused(
            &dir,
            "jwks_url = \"https://keys.example/jwks\"\njwks_refresh = \"soon\"\n",
            2,
            "jwks_refresh",
            "invalid duration",
        );
        assert_refused(
            &dir,
            "secret_file = \"secret\"\njwks_refresh = \"1m\"\n",
            2,
            "jwks_refresh",
            "only used with jwks_url",
        );
        assert_refused(
            &dir,
            "secret_file = \"secret\"\naudience = []\n",
            2,
            "audience",
            "at least one audience",
        );
        assert_refused(
            &dir,
            "secret_file = \"secret\"\nleeway = \"a while\"\n",
            2,
            "leeway",
            "invalid duration",
        );
        assert_refused(
            &dir,
            "secret_file = \"secret\"\nfrom = [\"header\", \"body\"]\n",
            2,
            "from[1]",
            "unknown token source",
        );

        let errors = load(&dir, "secret_file = \"secret\"\nissuer = 5\n").unwrap_err();
        assert!(
            errors.iter().any(|e| e.key == format!("{KEY}.issuer")
                && e.line == Some(FIRST + 1)
                && e.message.contains("a string or a list of strings")),
            "{errors:#?}"
        );

        // Never fetched at validation: an unreachable URL is fine until the first token.
        verifier(&dir, "jwks_url = \"http://127.0.0.1:9/jwks\"\n");
    }

    /// Which algorithms a key source takes: what the file lists, else all the key can do
    /// (an HMAC secret: HS256 only); a JWK set's keys decide for themselves.
    #[test]
    fn algorithms_settled_from_the_key_source() {
        use jsonwebtoken::Algorithm::*;
        let dir = TempDir::new("jwt");
        dir.write("secret", format!("{SECRET}\n"));
        dir.write("rsa.pem", &rsa().public);
        dir.write("p384.pem", &p384().public);
        dir.write("ed.pem", &ed25519().public);
        dir.write("jwks.json", "{\"keys\": []}");
        let algs = |table: &str| verifier(&dir, table).algorithms().map(<[_]>::to_vec);

        assert_eq!(algs("secret_file = \"secret\"\n"), Some(vec![HS256]));
        assert_eq!(
            algs("secret_file = \"secret\"\nalgorithms = [\"HS256\", \"HS384\", \"HS512\"]\n"),
            Some(vec![HS256, HS384, HS512])
        );
        // PATH is set for every test process; reading it avoids `set_var` in a threaded test.
        if std::env::var_os("PATH").is_some_and(|p| !p.is_empty()) {
            assert_eq!(algs("secret_env = \"PATH\"\n"), Some(vec![HS256]));
        }
        assert_eq!(
            algs("public_key = \"rsa.pem\"\n"),
            Some(vec![RS256, RS384, RS512, PS256, PS384, PS512])
        );
        assert_eq!(
            algs("public_key = \"rsa.pem\"\nalgorithms = [\"PS256\"]\n"),
            Some(vec![PS256])
        );
        assert_eq!(algs("public_key = \"p384.pem\"\n"), Some(vec![ES384]));
        assert_eq!(algs("public_key = \"ed.pem\"\n"), Some(vec![EdDSA]));
        assert_eq!(algs("jwks_url = \"http://127.0.0.1:9/jwks\"\n"), None);
        assert_eq!(
            algs("jwks_url = \"http://127.0.0.1:9/jwks\"\nalgorithms = [\"ES256\"]\n"),
            Some(vec![ES256])
        );
    }
}
