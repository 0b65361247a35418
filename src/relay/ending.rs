//! How a session ended: why the proxy ended it ([`Reason`], with the close codes and texts
//! each side is sent), what each direction carried, and the close frames seen.

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
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// A side went away without a close frame (EOF or reset): the other side gets 1011 (backend
    /// lost) or 1001 (client gone).
    Gone(CloseSide),
    /// A side did not answer the proxy's ping: 1001 to the other (and to it, if it listens).
    PingTimeout(CloseSide),
    IdleTimeout,
    MaxLifetime,
    /// Asked from outside (drain, reload), with this code to both sides.
    Requested(u16),
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
            Reason::Gone(Client) => (close_code::GOING_AWAY, close_code::GOING_AWAY),
            Reason::Gone(_) => (close_code::INTERNAL_ERROR, close_code::GOING_AWAY),
            Reason::PingTimeout(_) | Reason::IdleTimeout | Reason::MaxLifetime => {
                (close_code::GOING_AWAY, close_code::GOING_AWAY)
            }
            Reason::Requested(code) => (code, code),
        }
    }

    /// The reason text written in the proxy's close frames (short: control frames ≤ 125 B).
    pub(super) fn text(&self) -> &'static str {
        match self {
            Reason::ProtocolError(CloseSide::Client, _) => {
                close_code::phrase(close_code::PROTOCOL_ERROR)
            }
            Reason::ProtocolError(..) => "backend protocol error",
            Reason::MessageTooBig(_) => close_code::phrase(close_code::MESSAGE_TOO_BIG),
            Reason::Gone(CloseSide::Client) => "client went away",
            Reason::Gone(_) => "backend connection lost",
            Reason::PingTimeout(CloseSide::Client) => "client not responding",
            Reason::PingTimeout(_) => "backend not responding",
            Reason::IdleTimeout => "idle timeout",
            Reason::MaxLifetime => "session lifetime reached",
            Reason::Requested(close_code::SERVICE_RESTART) => {
                close_code::phrase(close_code::SERVICE_RESTART)
            }
            Reason::Requested(_) => close_code::phrase(close_code::GOING_AWAY),
        }
    }

    /// The access log's `outcome` for a session the proxy ended this way.
    pub fn outcome(&self) -> Outcome {
        match self {
            Reason::ProtocolError(CloseSide::Client, _) => Outcome::ClientProtocolError,
            Reason::ProtocolError(..) => Outcome::BackendProtocolError,
            Reason::MessageTooBig(_) => Outcome::MessageTooBig,
            Reason::Gone(CloseSide::Client) => Outcome::ClientGone,
            Reason::Gone(_) => Outcome::BackendGone,
            Reason::PingTimeout(CloseSide::Client) => Outcome::ClientPingTimeout,
            Reason::PingTimeout(_) => Outcome::BackendPingTimeout,
            Reason::IdleTimeout => Outcome::IdleTimeout,
            Reason::MaxLifetime => Outcome::MaxLifetime,
            Reason::Requested(_) => Outcome::Drained,
        }
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
    /// handshake did not finish within [`CLOSE_TIMEOUT`]).
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
