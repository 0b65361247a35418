//! The sticky cookie: an opaque value naming a client's backend, HMAC-protected so that a
//! client can neither forge one nor learn a backend's address from it.
//!
//! The value is base64url of `id (8) ‖ expiry (8, Unix seconds) ‖ tag (16)`: `id` is an HMAC
//! of the route and the backend's URL (so the same backend has the same id after a reload or,
//! with a configured secret, a restart), `tag` an HMAC of the route, `id` and expiry.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// A backend's identity in cookies.
pub type StickyId = [u8; ID_LEN];

const ID_LEN: usize = 8;
const TAG_LEN: usize = 16;
const VALUE_LEN: usize = ID_LEN + 8 + TAG_LEN;

/// The key cookie values are signed with.
pub struct StickyKey(hmac::Key);

impl std::fmt::Debug for StickyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StickyKey(<redacted>)")
    }
}

impl StickyKey {
    pub fn new(secret: &[u8]) -> StickyKey {
        StickyKey(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }

    /// One random key for the whole process, for routes without a secret: cookies then
    /// survive a reload but not a restart.
    pub fn process_key() -> Arc<StickyKey> {
        static KEY: OnceLock<Arc<StickyKey>> = OnceLock::new();
        KEY.get_or_init(|| Arc::new(StickyKey::new(&rand::random::<[u8; 32]>())))
            .clone()
    }

    fn mac(&self, parts: &[&[u8]]) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.0);
        for p in parts {
            // Length-prefixed, so that ("ab", "c") and ("a", "bc") differ.
            ctx.update(&(p.len() as u64).to_be_bytes());
            ctx.update(p);
        }
        ctx.sign()
    }

    /// A backend's id on `route`.
    pub fn id(&self, route: &str, backend_url: &str) -> StickyId {
        let tag = self.mac(&[b"backend", route.as_bytes(), backend_url.as_bytes()]);
        let mut id = [0u8; ID_LEN];
        id.copy_from_slice(&tag.as_ref()[..ID_LEN]);
        id
    }

    /// The cookie value naming `id`, good until `now + ttl`.
    pub fn value(&self, route: &str, id: &StickyId, now: SystemTime, ttl: Duration) -> String {
        let expiry = unix(now).saturating_add(ttl.as_secs()).to_be_bytes();
        let tag = self.mac(&[b"cookie", route.as_bytes(), id, &expiry]);
        let mut raw = Vec::with_capacity(VALUE_LEN);
        raw.extend_from_slice(id);
        raw.extend_from_slice(&expiry);
        raw.extend_from_slice(&tag.as_ref()[..TAG_LEN]);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// The backend id a cookie value names, if it is one of ours for `route` and not stale.
    pub fn open(&self, route: &str, value: &str, now: SystemTime) -> Option<StickyId> {
        let raw = URL_SAFE_NO_PAD.decode(value.trim()).ok()?;
        if raw.len() != VALUE_LEN {
            return None;
        }
        let (id, rest) = raw.split_at(ID_LEN);
        let (expiry, tag) = rest.split_at(8);
        let expected = self.mac(&[b"cookie", route.as_bytes(), id, expiry]);
        aws_lc_rs::constant_time::verify_slices_are_equal(&expected.as_ref()[..TAG_LEN], tag)
            .ok()?;
        let expiry = u64::from_be_bytes(expiry.try_into().ok()?);
        (expiry > unix(now)).then(|| id.try_into().ok()).flatten()
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The value of cookie `name` in a request's `Cookie` headers (the first, if several).
pub fn cookie<'h>(headers: &'h http::HeaderMap, name: &str) -> Option<&'h str> {
    cookies(headers, name).next()
}

/// Every value of cookie `name`, in order: a browser may hold two of one name (another
/// path or domain, a cookie set before a route moved) and sends both.
pub fn cookies<'h, 'n>(
    headers: &'h http::HeaderMap,
    name: &'n str,
) -> impl Iterator<Item = &'h str> + use<'h, 'n> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(move |pair| {
            let (n, v) = pair.split_once('=')?;
            (n.trim() == name).then(|| v.trim().trim_matches('"'))
        })
}

/// The `Set-Cookie` value: scoped to the route's path, kept from scripts, sent on same-site
/// navigations (`Lax`: a WebSocket from the site's own page), `Secure` on a TLS listener.
pub fn set_cookie(name: &str, value: &str, path: &str, ttl: Duration, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!(
        "{name}={value}; Path={path}; Max-Age={}; HttpOnly; SameSite=Lax{secure}",
        ttl.as_secs()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_opens_only_with_its_key_route_and_time() {
        let key = StickyKey::new(b"0123456789abcdef0123456789abcdef");
        let now = SystemTime::now();
        let id = key.id("chat", "ws://10.0.0.1:9000");
        assert_eq!(id, key.id("chat", "ws://10.0.0.1:9000"));
        assert_ne!(id, key.id("chat", "ws://10.0.0.2:9000"));
        let value = key.value("chat", &id, now, Duration::from_secs(60));
        assert!(!value.contains("10.0.0.1"));
        assert_eq!(key.open("chat", &value, now), Some(id));
        // Stale, another route, another key, or a flipped byte: nothing.
        assert_eq!(
            key.open("chat", &value, now + Duration::from_secs(61)),
            None
        );
        assert_eq!(key.open("other", &value, now), None);
        assert_eq!(
            StickyKey::new(b"another key").open("chat", &value, now),
            None
        );
        let mut raw = URL_SAFE_NO_PAD.decode(&value).unwrap();
        raw[0] ^= 1;
        assert_eq!(key.open("chat", &URL_SAFE_NO_PAD.encode(raw), now), None);
        for junk in ["", "x", "%%%", &"A".repeat(43), &value[..value.len() - 1]] {
            assert_eq!(key.open("chat", junk, now), None, "{junk:?}");
        }
    }

    #[test]
    fn cookies_are_found_and_written() {
        let mut h = http::HeaderMap::new();
        h.append(http::header::COOKIE, "a=1; srv=xyz".parse().unwrap());
        h.append(http::header::COOKIE, "b=2".parse().unwrap());
        assert_eq!(cookie(&h, "srv"), Some("xyz"));
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, "sr"), None);
        assert_eq!(
            set_cookie("srv", "v", "/chat", Duration::from_secs(3600), true),
            "srv=v; Path=/chat; Max-Age=3600; HttpOnly; SameSite=Lax; Secure"
        );
    }
}
