//! How a session ended: why the proxy ended it ([`Reason`], with the close codes and texts
//! each side is sent), what each direction carried, and the close frames seen.

use std::time::SystemTime;

use tokio::time::Instant;

use crate::frame::{Violation, close_code};
use crate::outcome::{CloseSide, Outcome};

/// What one direction carried.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirStats {
    pub bytes: u64,
    pub frames: u64,
    pub messages: u64,
}

/// A close frame's content.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CloseInfo {
    pub code: Option<u16>,
    pub reason: String,
}

/// Why the proxy itself ended a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A side broke RFC 6455 framing: 1002 to it; the client gets 1014 if it was the backend,
    /// the backend 1001 if it was the client.
    ProtocolError(CloseSide, Violation),
    /// A side sent a message over the limit: 1009 to it, 1001 to the other.
    MessageTooBig(CloseSide),
    /// A side stayed over its fair share for the route's `rate_grace`: 1008 "rate limit" to
    /// it, 1001 to the other.
    RateLimited(CloseSide),
    /// A side went away without a close frame (EOF or reset): the other side gets 1011 (backend
    /// lost) or 1001 (client gone).
    Gone(CloseSide),
    /// A side did not answer the proxy's ping: 1001 to the other (and to it, if it listens).
    PingTimeout(CloseSide),
    IdleTimeout,
    MaxLifetime,
    /// The token the session was opened with has expired (`exp` plus the leeway, on a route
    /// with `expire_sessions`): 1008 "token expired" to the client, 1001 to the backend.
    TokenExpired,
    /// Asked from outside (drain, reload), with this code to both sides.
    Requested(u16),
    /// Asked for this session alone (the admin API, a backend drain: see
    /// [`super::CloseRequest`]), with this code to both sides; `true` when an operator asked
    /// for this session.
    Asked(u16, bool),
}

impl Reason {
    /// Close codes for (client, backend).
    pub(super) fn codes(&self) -> (u16, u16) {
        use CloseSide::*;
        match *self {
            Reason::ProtocolError(Client, v) => (v.close_code(), close_code::GOING_AWAY),
            Reason::ProtocolError(_, v) => (close_code::BAD_GATEWAY, v.close_code()),
            Reason::MessageTooBig(Client) => (close_code::MESSAGE_TOO_BIG, close_code::GOING_AWAY),
            Reason::MessageTooBig(_) => (close_code::GOING_AWAY, close_code::MESSAGE_TOO_BIG),
            Reason::RateLimited(Client) => (close_code::POLICY_VIOLATION, close_code::GOING_AWAY),
            Reason::RateLimited(_) => (close_code::GOING_AWAY, close_code::POLICY_VIOLATION),
            Reason::Gone(Client) => (close_code::GOING_AWAY, close_code::GOING_AWAY),
            Reason::Gone(_) => (close_code::INTERNAL_ERROR, close_code::GOING_AWAY),
            Reason::PingTimeout(_) | Reason::IdleTimeout | Reason::MaxLifetime => {
                (close_code::GOING_AWAY, close_code::GOING_AWAY)
            }
            Reason::TokenExpired => (close_code::POLICY_VIOLATION, close_code::GOING_AWAY),
            Reason::Requested(code) | Reason::Asked(code, _) => (code, code),
        }
    }

    /// The reason text written in the proxy's close frame to `to` (short: control frames ≤
    /// 125 B). A protocol error, an oversized message or a rate limit is named to the side
    /// at fault by its close code's phrase, and to the other side as the offender's, so a
    /// backend closed over its client's violation does not read "protocol error" (or
    /// "message too big") as its own.
    pub(super) fn text(&self, to: CloseSide) -> &'static str {
        match *self {
            Reason::ProtocolError(side, v) if side == to => close_code::phrase(v.close_code()),
            Reason::ProtocolError(CloseSide::Client, _) => "client protocol error",
            Reason::ProtocolError(..) => "backend protocol error",
            Reason::MessageTooBig(side) if side == to => {
                close_code::phrase(close_code::MESSAGE_TOO_BIG)
            }
            Reason::MessageTooBig(CloseSide::Client) => "client message too big",
            Reason::MessageTooBig(_) => "backend message too big",
            Reason::RateLimited(side) if side == to => "rate limit",
            Reason::RateLimited(CloseSide::Client) => "client rate limit",
            Reason::RateLimited(_) => "backend rate limit",
            Reason::Gone(CloseSide::Client) => "client went away",
            Reason::Gone(_) => "backend connection lost",
            Reason::PingTimeout(CloseSide::Client) => "client not responding",
            Reason::PingTimeout(_) => "backend not responding",
            Reason::IdleTimeout => "idle timeout",
            Reason::MaxLifetime => "session lifetime reached",
            Reason::TokenExpired => "token expired",
            Reason::Requested(close_code::SERVICE_RESTART) => {
                close_code::phrase(close_code::SERVICE_RESTART)
            }
            Reason::Requested(_) | Reason::Asked(..) => close_code::phrase(close_code::GOING_AWAY),
        }
    }

    /// Who started the end (the access log's `closed_by`): a side that went away ended the
    /// session itself; for every other reason the proxy wrote the first close frames, even
    /// when a side gave it cause (a violation, an oversized message, no pong), which
    /// [`Reason::offender`] and the outcome name.
    pub(super) fn started_by(&self) -> CloseSide {
        match *self {
            Reason::Gone(side) => side,
            _ => CloseSide::Proxy,
        }
    }

    /// The side whose behaviour made the proxy end the session, if one did: it broke the
    /// framing, sent a message over the limit, did not answer a ping, or stayed over its
    /// fair share.
    pub fn offender(&self) -> Option<CloseSide> {
        match *self {
            Reason::ProtocolError(side, _) | Reason::MessageTooBig(side) => Some(side),
            Reason::PingTimeout(side) | Reason::RateLimited(side) => Some(side),
            _ => None,
        }
    }

    /// The access log's `outcome` for a session the proxy ended this way.
    pub fn outcome(&self) -> Outcome {
        match self {
            Reason::ProtocolError(CloseSide::Client, _) => Outcome::ClientProtocolError,
            Reason::ProtocolError(..) => Outcome::BackendProtocolError,
            Reason::MessageTooBig(_) => Outcome::MessageTooBig,
            Reason::RateLimited(_) => Outcome::RateLimited,
            Reason::Gone(CloseSide::Client) => Outcome::ClientGone,
            Reason::Gone(_) => Outcome::BackendGone,
            Reason::PingTimeout(CloseSide::Client) => Outcome::ClientPingTimeout,
            Reason::PingTimeout(_) => Outcome::BackendPingTimeout,
            Reason::IdleTimeout => Outcome::IdleTimeout,
            Reason::MaxLifetime => Outcome::MaxLifetime,
            Reason::TokenExpired => Outcome::TokenExpired,
            Reason::Requested(_) | Reason::Asked(_, false) => Outcome::Drained,
            Reason::Asked(_, true) => Outcome::AdminClosed,
        }
    }
}

/// The reason text of the proxy's close frame to `to` for `reason`: the one asked for with a
/// session's own close request, else the reason's own.
pub(super) fn text<'a>(st: &'a super::State, reason: &Reason, to: CloseSide) -> &'a str {
    match (reason, st.link().asked()) {
        (Reason::Asked(..), Some(asked)) => &asked.reason,
        _ => reason.text(to),
    }
}

impl<C, B> super::Relay<C, B> {
    /// Ends the session at `at` (wall-clock time: a token's `exp`), when the token it was
    /// opened with expires, with [`Reason::TokenExpired`] (unless the route's lifetime ends it
    /// first). It shares the lifetime's deadline and timer: an idle session does not grow. Not
    /// jittered like the lifetime: the token says when it stops being good. A time already
    /// past ends the session at once.
    pub fn token_expires_at(mut self, at: Option<SystemTime>) -> Self {
        let left = |t: SystemTime| t.duration_since(SystemTime::now()).unwrap_or_default();
        // An end too far off to represent is no end.
        if let Some(at) = at.and_then(|t| Instant::now().checked_add(left(t)))
            && self
                .st
                .lifetime_end
                .is_none_or(|l| super::At::not_before(at) < l)
        {
            self.st.lifetime_end = Some(super::At::not_before(at));
            self.st.token_end = true;
        }
        self
    }
}

/// How a relay ended.
#[derive(Debug)]
pub struct RelayOutcome {
    pub client_to_backend: DirStats,
    pub backend_to_client: DirStats,
    /// The close frame the client sent, if any.
    pub client_close: Option<CloseInfo>,
    /// The close frame the backend sent, if any.
    pub backend_close: Option<CloseInfo>,
    /// Who started the end: the side whose close frame came first or who left first, or the
    /// proxy.
    pub closed_by: CloseSide,
    /// Set when the proxy ended the session, with why.
    pub proxy_reason: Option<Reason>,
    /// The session was cut without waiting (the grace period ran out, or the closing
    /// handshake did not finish within [`CLOSE_TIMEOUT`](super::CLOSE_TIMEOUT)), or a side
    /// kept sending more than [`DRAIN_LIMIT`](super::DRAIN_LIMIT) after it was no longer
    /// forwarded and was read no more (its connection is then reset; `error` says so).
    pub cut: bool,
    /// The I/O error that ended a side, if one did.
    pub error: Option<String>,
    /// The first side that sent frames after its own close frame; they were dropped
    /// (RFC 6455 §5.5.1: nothing follows a close frame).
    pub late_frames: Option<CloseSide>,
}

impl RelayOutcome {
    /// The access log's `outcome`.
    pub fn outcome(&self) -> Outcome {
        match (&self.proxy_reason, self.cut) {
            (Some(r), _) => r.outcome(),
            (None, true) => Outcome::CloseTimeout,
            (None, false) => Outcome::Closed,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use bytes::Bytes;
    use tokio::io::{AsyncWriteExt, duplex};
    use tokio::time::Instant;

    use super::*;
    use crate::config::SessionConfig;
    use crate::frame::{self, opcode};
    use crate::relay::tests::read_close;
    use crate::relay::{Control, Link, relay, test_env};

    /// A relay whose token expires `after` from now (in wall-clock time, as a token's `exp`),
    /// with a route lifetime of `lifetime`.
    async fn session_with_token(
        after: Duration,
        lifetime: Option<Duration>,
    ) -> (Duration, RelayOutcome) {
        let (mut client, client_side) = duplex(1024);
        let (backend_side, mut backend) = duplex(1024);
        let (control, link) = (Control::default(), std::sync::Arc::new(Link::default()));
        let cfg = SessionConfig {
            ping_interval: None,
            max_lifetime: lifetime,
            ..SessionConfig::default()
        };
        let start = Instant::now();
        let relay = relay(
            (client_side, Bytes::new()),
            (backend_side, Bytes::new()),
            test_env(cfg, &control, &link),
            0,
        )
        .token_expires_at(Some(SystemTime::now() + after));
        // The peers answer the proxy's close and leave (their ends drop with the block).
        let peers = async move {
            let to_client = read_close(&mut client).await;
            let elapsed = start.elapsed();
            let to_backend = read_close(&mut backend).await;
            let reply = |code: u16, mask| {
                frame::encode_frame(opcode::CLOSE, true, &code.to_be_bytes(), mask)
            };
            client
                .write_all(&reply(to_client.0.unwrap(), Some([1, 2, 3, 4])))
                .await
                .unwrap();
            backend
                .write_all(&reply(to_backend.0.unwrap(), None))
                .await
                .unwrap();
            (elapsed, to_client, to_backend)
        };
        let (out, (elapsed, to_client, to_backend)) = tokio::join!(relay, peers);
        if out.outcome() == Outcome::TokenExpired {
            assert_eq!(
                to_client,
                (Some(close_code::POLICY_VIOLATION), "token expired".into())
            );
            assert_eq!(to_backend.0, Some(close_code::GOING_AWAY));
        }
        (elapsed, out)
    }

    #[test]
    fn the_proxy_starts_the_end_unless_a_side_went_away() {
        use CloseSide::{Backend, Client, Proxy};
        let caused = [
            (Reason::PingTimeout(Client), Client),
            (Reason::PingTimeout(Backend), Backend),
            (Reason::MessageTooBig(Client), Client),
            (Reason::MessageTooBig(Backend), Backend),
            (Reason::RateLimited(Client), Client),
            (Reason::RateLimited(Backend), Backend),
            (
                Reason::ProtocolError(Client, Violation::UnmaskedFromClient),
                Client,
            ),
            (
                Reason::ProtocolError(Backend, Violation::MaskedFromServer),
                Backend,
            ),
        ];
        for (reason, side) in caused {
            assert_eq!(reason.started_by(), Proxy, "{reason:?}");
            assert_eq!(reason.offender(), Some(side), "{reason:?}");
        }
        for reason in [
            Reason::IdleTimeout,
            Reason::MaxLifetime,
            Reason::TokenExpired,
            Reason::Requested(1001),
            Reason::Asked(4000, true),
        ] {
            assert_eq!(reason.started_by(), Proxy, "{reason:?}");
            assert_eq!(reason.offender(), None, "{reason:?}");
        }
        // A side that left without a close frame ended the session itself.
        for side in [Client, Backend] {
            assert_eq!(Reason::Gone(side).started_by(), side);
            assert_eq!(Reason::Gone(side).offender(), None);
        }
    }

    /// Real time, short deadlines (no paused clock in this crate's tests): the bounds are
    /// loose so that a loaded machine does not fail them, tight enough to tell the deadlines
    /// apart.
    #[tokio::test]
    async fn a_session_ends_when_its_token_expires() {
        let ms = Duration::from_millis;
        let (elapsed, out) = session_with_token(ms(300), None).await;
        assert_eq!(out.outcome(), Outcome::TokenExpired);
        assert_eq!(out.closed_by, CloseSide::Proxy);
        assert!(!out.cut);
        assert!(
            elapsed >= ms(290) && elapsed < ms(1300),
            "closed after {elapsed:?}"
        );

        // A token already expired when the session starts ends it at once.
        let (elapsed, out) = session_with_token(Duration::ZERO, None).await;
        assert_eq!(out.outcome(), Outcome::TokenExpired);
        assert!(elapsed < ms(1000), "closed after {elapsed:?}");

        // The route's lifetime, when it comes first, ends the session as before ...
        let (elapsed, out) = session_with_token(ms(5000), Some(ms(200))).await;
        assert_eq!(out.outcome(), Outcome::MaxLifetime);
        assert!(elapsed < ms(1200), "closed after {elapsed:?}");
        // ... and the token, when it comes first, with its own code.
        let (elapsed, out) = session_with_token(ms(200), Some(ms(5000))).await;
        assert_eq!(out.outcome(), Outcome::TokenExpired);
        assert!(elapsed < ms(1200), "closed after {elapsed:?}");
    }
}
