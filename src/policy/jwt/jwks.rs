//! A JWK set fetched over HTTP(S): fetched when first needed, cached, refreshed in the
//! background, refetched (at most every few seconds) when a token names an unknown key.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use http::Uri;
use jsonwebtoken::Algorithm;

use super::keys::{Key, parse_jwks, restrict};
use super::{JwtError, alg_list};
use crate::http_client::HttpClient;

/// How long a JWKS fetch may take, connection included.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// A key set is a few kilobytes; anything near this is not a key set.
const MAX_JWKS_BYTES: usize = 1 << 20;
/// An unknown `kid` refetches the key set (the issuer may have rotated its keys), but not
/// more often than this, so tokens with made-up key ids cannot make wsgate hammer the issuer.
const KID_REFETCH_INTERVAL: Duration = Duration::from_secs(10);
/// After a failed fetch, the next one waits this long (or `jwks_refresh`, if shorter).
pub(super) const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(10);
/// While no key set was ever fetched, each verify may retry, but not more often than this:
/// while the key server is down, a burst of handshakes costs one fetch, not one each.
const FIRST_FETCH_RETRY: Duration = Duration::from_secs(2);

/// A key set fetched from a URL.
#[derive(Debug)]
pub(super) struct KeySet {
    pub(super) keys: Vec<Key>,
    pub(super) fetched: Instant,
}

/// A JWKS URL's cache. `state` is only held for a few instructions (never across an
/// await); `fetching` serialises the fetches themselves, so that concurrent handshakes
/// wait for one fetch instead of each starting their own.
pub struct RemoteJwks {
    pub(super) url: Uri,
    pub(super) client: HttpClient,
    pub(super) refresh: Duration,
    /// `algorithms` from the config: keys are limited to these.
    pub(super) allowed: Option<Vec<Algorithm>>,
    pub(super) state: Mutex<RemoteState>,
    pub(super) fetching: tokio::sync::Mutex<()>,
    /// Completed fetch attempts (tests wait on it instead of sleeping).
    pub(super) attempts: tokio::sync::watch::Sender<u64>,
}

#[derive(Default)]
pub(super) struct RemoteState {
    pub(super) set: Option<Arc<KeySet>>,
    /// When the last fetch attempt ended, successful or not.
    pub(super) attempted: Option<Instant>,
    pub(super) last_error: Option<String>,
    /// When an unknown `kid` last caused a refetch.
    pub(super) kid_refetch: Option<Instant>,
    /// A background refresh is queued or running.
    pub(super) refreshing: bool,
}

impl std::fmt::Debug for RemoteJwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteJwks")
            .field("url", &self.url)
            .field("refresh", &self.refresh)
            .finish_non_exhaustive()
    }
}

impl RemoteJwks {
    pub(super) fn new(
        url: Uri,
        client: HttpClient,
        refresh: Duration,
        allowed: Option<Vec<Algorithm>>,
    ) -> RemoteJwks {
        RemoteJwks {
            url,
            client,
            refresh,
            allowed,
            state: Mutex::new(RemoteState::default()),
            fetching: tokio::sync::Mutex::new(()),
            attempts: tokio::sync::watch::Sender::new(0),
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, RemoteState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The set to verify with: the cached one (starting a background refresh when it is
    /// due: the cached set keeps serving meanwhile), or else the result of a first fetch.
    pub(super) async fn current(self: &Arc<Self>) -> Result<Arc<KeySet>, JwtError> {
        let (cached, refresh) = {
            let mut st = self.lock();
            let retry_after = RETRY_AFTER_FAILURE.min(self.refresh);
            let due = st.set.as_ref().is_some_and(|s| {
                s.fetched.elapsed() >= self.refresh
                    && !st.refreshing
                    && st.attempted.is_none_or(|t| t.elapsed() >= retry_after)
            });
            if due {
                st.refreshing = true;
            }
            (st.set.clone(), due)
        };
        if refresh {
            let this = Arc::clone(self);
            tokio::spawn(async move { this.refresh_in_background().await });
        }
        match cached {
            Some(set) => Ok(set),
            None => self.first_fetch().await,
        }
    }

    pub(super) async fn refresh_in_background(&self) {
        {
            let _fetching = self.fetching.lock().await;
            // An unknown kid may have refetched while this task waited.
            let fresh = self
                .lock()
                .set
                .as_ref()
                .is_some_and(|s| s.fetched.elapsed() < self.refresh);
            if !fresh {
                let _ = self.fetch_locked().await;
            }
        }
        self.lock().refreshing = false;
    }

    pub(super) async fn first_fetch(&self) -> Result<Arc<KeySet>, JwtError> {
        let asked = Instant::now();
        let _fetching = self.fetching.lock().await;
        {
            let st = self.lock();
            if let Some(set) = &st.set {
                return Ok(set.clone());
            }
            // A fetch that ended while this one waited, or a recent failure, answers for it.
            if let Some(t) = st.attempted
                && (t >= asked || t.elapsed() < FIRST_FETCH_RETRY)
            {
                return Err(self.unavailable(st.last_error.as_deref().unwrap_or("no key set")));
            }
        }
        self.fetch_locked().await.map_err(|e| self.unavailable(&e))
    }

    pub(super) fn unavailable(&self, reason: &str) -> JwtError {
        JwtError::KeysUnavailable(format!("no key set from {} yet: {reason}", self.url))
    }

    /// After an unknown `kid`: the set someone else fetched meanwhile, or a fresh fetch
    /// unless an unknown `kid` already caused one in the last [`KID_REFETCH_INTERVAL`].
    pub(super) async fn refetch_for_kid(&self, seen: &Arc<KeySet>) -> Option<Arc<KeySet>> {
        let _fetching = self.fetching.lock().await;
        {
            let mut st = self.lock();
            if let Some(set) = &st.set
                && !Arc::ptr_eq(set, seen)
            {
                return Some(set.clone());
            }
            if st
                .kid_refetch
                .is_some_and(|t| t.elapsed() < KID_REFETCH_INTERVAL)
            {
                return None;
            }
            st.kid_refetch = Some(Instant::now());
        }
        self.fetch_locked().await.ok()
    }

    /// Fetches and installs the set; a failure keeps the old set. Called with `fetching` held.
    pub(super) async fn fetch_locked(&self) -> Result<Arc<KeySet>, String> {
        let result = self.fetch().await;
        let out = {
            let mut st = self.lock();
            st.attempted = Some(Instant::now());
            match result {
                Ok(keys) => {
                    tracing::debug!(url = %self.url, keys = keys.len(), "JWKS fetched");
                    let set = Arc::new(KeySet {
                        keys,
                        fetched: Instant::now(),
                    });
                    st.set = Some(set.clone());
                    st.last_error = None;
                    Ok(set)
                }
                Err(e) => {
                    if st.set.is_some() {
                        tracing::warn!(url = %self.url, error = %e, "JWKS refresh failed; the key set fetched before stays in use");
                    } else {
                        tracing::warn!(url = %self.url, error = %e, "JWKS fetch failed; tokens cannot be verified until it succeeds");
                    }
                    st.last_error = Some(e.clone());
                    Err(e)
                }
            }
        };
        self.attempts.send_modify(|n| *n += 1);
        out
    }

    pub(super) async fn fetch(&self) -> Result<Vec<Key>, String> {
        let resp = self
            .client
            .get(&self.url, FETCH_TIMEOUT, MAX_JWKS_BYTES)
            .await
            .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("HTTP status {}", resp.status()));
        }
        let parsed = parse_jwks(resp.body(), false)?;
        for (which, why) in &parsed.skipped {
            tracing::debug!(url = %self.url, key = %which, reason = %why, "JWKS key skipped");
        }
        let keys = restrict(parsed.keys, self.allowed.as_deref());
        if keys.is_empty() {
            return Err(match &self.allowed {
                Some(a) => format!("no key in the set is usable with {}", alg_list(a)),
                None => "no usable key in the set".into(),
            });
        }
        Ok(keys)
    }
}
