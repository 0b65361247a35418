//! The PROXY protocol, v1 (text) and v2 (binary), as an L4 load balancer sends it at the start
//! of a connection: <https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt>.
//!
//! [`parse`] is a pure function over bytes; [`read_header`] takes exactly the header's bytes off
//! a socket, so whatever follows it (a TLS ClientHello, an HTTP request) stays there for the
//! next layer. The result is the source address the balancer saw, or `None` when the header
//! says there is none to use (v1 `UNKNOWN`, v2 `LOCAL` such as a balancer's health check, v2
//! `UNSPEC` or `AF_UNIX`): the caller then keeps the TCP peer.
//!
//! Parsing is strict where the specification is (single spaces, canonical addresses, no
//! leading zeros, CRLF within 107 bytes, known v2 version, command and family) and skips what
//! it allows a receiver to skip (v2 TLVs, whose bounds are still checked).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The longest v1 line, CRLF included: `PROXY UNKNOWN` with two full IPv6 addresses and ports.
pub const V1_MAX_LEN: usize = 107;
/// The first 12 bytes of every v2 header.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Signature, version and command, family and transport, and the 16-bit length.
pub const V2_FIXED_LEN: usize = 16;
const V1_PREFIX: &[u8] = b"PROXY ";
/// How much [`read_header`] peeks at a time: a whole v1 line, or a v2 header with IPv6
/// addresses and a few TLVs. Longer v2 headers are read in full once their length is known.
const PEEK_BYTES: usize = 256;

/// Why a connection's PROXY header was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error(
        "no PROXY protocol header: the connection starts with neither \"PROXY \" nor the v2 signature"
    )]
    NotProxy,
    /// Only from [`parse`]: the bytes are the start of a header, not a whole one.
    #[error("incomplete PROXY header")]
    Incomplete,
    #[error("connection closed inside the PROXY header")]
    Eof,
    /// Closed (or reset) before sending a byte: a TCP health check or a port scan, not a bad
    /// header.
    #[error("connection closed before any PROXY header")]
    Closed,
    #[error("reading the PROXY header: {0}")]
    Io(#[source] std::io::Error),
    #[error("PROXY v1 header: no CRLF within {V1_MAX_LEN} bytes")]
    V1TooLong,
    #[error("PROXY v1 header: {0}")]
    V1Syntax(&'static str),
    #[error("PROXY v2 header: version {0} (only 2 is defined)")]
    V2Version(u8),
    #[error("PROXY v2 header: unknown command {0:#x} (expected LOCAL or PROXY)")]
    V2Command(u8),
    #[error(
        "PROXY v2 header: unsupported address family and transport {0:#04x} (expected UNSPEC, TCP over IPv4 or IPv6, or AF_UNIX)"
    )]
    V2Family(u8),
    #[error(
        "PROXY v2 header: {len} bytes after the fixed part, too few for the {family} addresses ({need} bytes)"
    )]
    V2Truncated {
        family: &'static str,
        len: usize,
        need: usize,
    },
    #[error("PROXY v2 header: a TLV runs past the end of the header")]
    V2Tlv,
}

impl From<std::io::Error> for ProxyHeaderError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            ProxyHeaderError::Eof
        } else {
            ProxyHeaderError::Io(e)
        }
    }
}

/// Reads one PROXY header (v1 or v2) off `stream`, taking exactly its bytes and nothing more.
///
/// The header's end is found by peeking. Bytes peeked before the end is in sight are all part
/// of the header (see [`header_len`]), so they are consumed at once: the next peek then waits
/// for new data instead of returning the same bytes again in a busy loop. The caller bounds
/// the time this takes; a peer that sends nothing waits here forever.
pub async fn read_header(stream: &mut TcpStream) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let mut header = Vec::new();
    let mut peeked = [0u8; PEEK_BYTES];
    loop {
        let n = match stream.peek(&mut peeked).await {
            // Reset before a byte: as closed (health checks that close with a reset).
            Err(e) if header.is_empty() && e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Err(ProxyHeaderError::Closed);
            }
            r => r?,
        };
        if n == 0 && header.is_empty() {
            return Err(ProxyHeaderError::Closed);
        }
        if n == 0 {
            return Err(ProxyHeaderError::Eof);
        }
        let have = header.len();
        header.extend_from_slice(&peeked[..n]);
        match header_len(&header)? {
            Some(len) => {
                header.resize(len, 0);
                stream.read_exact(&mut header[have..]).await?;
                return parse(&header).map(|(source, _)| source);
            }
            None => {
                stream.read_exact(&mut header[have..]).await?;
            }
        }
    }
}

/// Parses the PROXY header at the start of `buf`: the source address (`None`: use the TCP
/// peer) and the header's length. Bytes after the header are not looked at.
/// [`ProxyHeaderError::Incomplete`] means `buf` is a valid start that needs more bytes.
pub fn parse(buf: &[u8]) -> Result<(Option<SocketAddr>, usize), ProxyHeaderError> {
    let len = header_len(buf)?.ok_or(ProxyHeaderError::Incomplete)?;
    let header = &buf[..len];
    let source = if header[0] == b'P' {
        parse_v1(header)?
    } else {
        parse_v2(header)?
    };
    Ok((source, len))
}

/// The length of the header at the start of `buf`, once `buf` shows it; `Ok(None)` only when
/// a valid header would be longer than `buf` (which is what lets [`read_header`] consume every
/// byte it has seen). Only the framing is checked here: the start of the signature, v1's CRLF
/// within [`V1_MAX_LEN`], v2's length field.
pub fn header_len(buf: &[u8]) -> Result<Option<usize>, ProxyHeaderError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let starts_with = |prefix: &[u8]| {
        let n = buf.len().min(prefix.len());
        buf[..n] == prefix[..n]
    };
    if first == V2_SIGNATURE[0] {
        if !starts_with(&V2_SIGNATURE) {
            return Err(ProxyHeaderError::NotProxy);
        }
        let Some(&[hi, lo]) = buf.get(14..V2_FIXED_LEN) else {
            return Ok(None);
        };
        let len = V2_FIXED_LEN + usize::from(u16::from_be_bytes([hi, lo]));
        Ok((buf.len() >= len).then_some(len))
    } else if first == V1_PREFIX[0] {
        if !starts_with(V1_PREFIX) {
            return Err(ProxyHeaderError::NotProxy);
        }
        match buf.iter().take(V1_MAX_LEN).position(|&b| b == b'\n') {
            Some(i) => Ok(Some(i + 1)),
            None if buf.len() >= V1_MAX_LEN => Err(ProxyHeaderError::V1TooLong),
            None => Ok(None),
        }
    } else {
        Err(ProxyHeaderError::NotProxy)
    }
}

/// `line` is the whole v1 line up to and including its first `\n`.
fn parse_v1(line: &[u8]) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    use ProxyHeaderError::V1Syntax;
    let line = line
        .strip_suffix(b"\r\n")
        .ok_or(V1Syntax("the line ends in a bare LF, not CRLF"))?;
    let rest = line
        .strip_prefix(V1_PREFIX)
        .ok_or(V1Syntax("the line does not start with \"PROXY \""))?;
    // "The receiver must ignore anything presented before the CRLF is found" after UNKNOWN:
    // checked on bytes, before any UTF-8 check, since that part may be anything.
    if rest == b"UNKNOWN" || rest.starts_with(b"UNKNOWN ") {
        return Ok(None);
    }
    let rest = std::str::from_utf8(rest).map_err(|_| V1Syntax("not ASCII"))?;
    let mut fields = rest.split(' ');
    let ipv6 = match fields.next() {
        Some("TCP4") => false,
        Some("TCP6") => true,
        _ => {
            return Err(V1Syntax(
                "unknown protocol (expected TCP4, TCP6 or UNKNOWN)",
            ));
        }
    };
    let (Some(src), Some(dst), Some(sport), Some(dport), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(V1Syntax(
            "expected source and destination addresses and ports, each after a single space",
        ));
    };
    let src = parse_ip(src, ipv6).ok_or(V1Syntax("bad source address for the protocol"))?;
    parse_ip(dst, ipv6).ok_or(V1Syntax("bad destination address for the protocol"))?;
    let sport = parse_port(sport).ok_or(V1Syntax("bad source port"))?;
    parse_port(dport).ok_or(V1Syntax("bad destination port"))?;
    Ok(Some(SocketAddr::new(src, sport)))
}

/// An address of the family the v1 protocol names. std's IPv4 parser already refuses the
/// leading zeros the specification forbids (`010.0.0.1`).
fn parse_ip(s: &str, ipv6: bool) -> Option<IpAddr> {
    if ipv6 {
        s.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
    } else {
        s.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
    }
}

/// A decimal port, 0..=65535, without leading zeros or a sign (which `u16::from_str` allows).
fn parse_port(s: &str) -> Option<u16> {
    let digits = !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits || (s.len() > 1 && s.starts_with('0')) {
        return None;
    }
    s.parse().ok()
}

/// `h` is a whole v2 header: the signature checked, `h.len()` = 16 + its length field.
fn parse_v2(h: &[u8]) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let version = h[12] >> 4;
    if version != 2 {
        return Err(ProxyHeaderError::V2Version(version));
    }
    match h[12] & 0x0f {
        // LOCAL (health checks, the balancer's own connections): "the receiver must use the
        // real connection endpoints and discard the protocol block including the family".
        0x0 => return Ok(None),
        0x1 => {}
        command => return Err(ProxyHeaderError::V2Command(command)),
    }
    let body = &h[V2_FIXED_LEN..];
    let (family, need) = match h[13] {
        // UNSPEC: the balancer does not know the source; AF_UNIX: no IP to speak of.
        0x00 | 0x31 | 0x32 => return Ok(None),
        0x11 => ("IPv4", 12),
        0x21 => ("IPv6", 36),
        // UDP (0x12, 0x22) cannot describe a TCP connection; other values are invalid.
        other => return Err(ProxyHeaderError::V2Family(other)),
    };
    let (addrs, tlvs) = body
        .split_at_checked(need)
        .ok_or(ProxyHeaderError::V2Truncated {
            family,
            len: body.len(),
            need,
        })?;
    check_tlvs(tlvs)?;
    let source = if need == 12 {
        let ip = Ipv4Addr::new(addrs[0], addrs[1], addrs[2], addrs[3]);
        SocketAddr::new(ip.into(), u16::from_be_bytes([addrs[8], addrs[9]]))
    } else {
        let mut octets = [0u8; 16];
        octets.copy_from_slice(&addrs[..16]);
        let ip = Ipv6Addr::from(octets);
        SocketAddr::new(ip.into(), u16::from_be_bytes([addrs[32], addrs[33]]))
    };
    Ok(Some(source))
}

/// The TLVs after the addresses (type, 16-bit length, value) are not used, but must tile the
/// rest of the header exactly: a length that runs past the end is a corrupt header.
fn check_tlvs(mut tlvs: &[u8]) -> Result<(), ProxyHeaderError> {
    while !tlvs.is_empty() {
        let Some(&[_kind, hi, lo]) = tlvs.get(..3) else {
            return Err(ProxyHeaderError::V2Tlv);
        };
        let end = 3 + usize::from(u16::from_be_bytes([hi, lo]));
        tlvs = tlvs.get(end..).ok_or(ProxyHeaderError::V2Tlv)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(bytes: &[u8]) -> Option<SocketAddr> {
        parse(bytes).unwrap().0
    }

    fn err(bytes: &[u8]) -> ProxyHeaderError {
        parse(bytes).unwrap_err()
    }

    #[test]
    fn v1_addresses_and_length() {
        let line = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\nGET /";
        assert_eq!(
            parse(line).unwrap(),
            (Some("192.0.2.1:56324".parse().unwrap()), 45)
        );
        assert_eq!(
            source(b"PROXY TCP6 2001:db8::1 2001:db8::2 0 65535\r\n"),
            Some("[2001:db8::1]:0".parse().unwrap())
        );
        assert_eq!(source(b"PROXY UNKNOWN\r\n"), None);
        assert_eq!(source(b"PROXY UNKNOWN \xff anything\r\n"), None);
    }

    #[test]
    fn v1_strictness() {
        for bad in [
            &b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\n"[..],
            b"PROXY TCP4  192.0.2.1 198.51.100.2 56324 443\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443 \r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 56324\r\n",
            b"PROXY TCP4 2001:db8::1 198.51.100.2 56324 443\r\n",
            b"PROXY TCP6 192.0.2.1 198.51.100.2 56324 443\r\n",
            b"PROXY TCP4 192.0.2.01 198.51.100.2 56324 443\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 056324 443\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 65536 443\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 +5632 443\r\n",
            b"PROXY UDP4 192.0.2.1 198.51.100.2 56324 443\r\n",
            b"PROXY UNKNOWNX\r\n",
            b"PROXY \r\n",
        ] {
            assert!(
                matches!(err(bad), ProxyHeaderError::V1Syntax(_)),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(matches!(err(&[b'P'; 200][..]), ProxyHeaderError::NotProxy));
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(V1_MAX_LEN, b'a');
        assert!(matches!(err(&long), ProxyHeaderError::V1TooLong));
        assert!(matches!(
            err(b"GET / HTTP/1.1\r\n"),
            ProxyHeaderError::NotProxy
        ));
        assert!(matches!(
            err(b"PROXY TCP4 1.2"),
            ProxyHeaderError::Incomplete
        ));
    }

    fn v2(ver_cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.extend_from_slice(&[ver_cmd, fam]);
        h.extend_from_slice(&(body.len() as u16).to_be_bytes());
        h.extend_from_slice(body);
        h
    }

    #[test]
    fn v2_commands_and_families() {
        let v4 = [192, 0, 2, 1, 198, 51, 100, 2, 0xdc, 0x04, 0x01, 0xbb];
        assert_eq!(
            source(&v2(0x21, 0x11, &v4)),
            Some("192.0.2.1:56324".parse().unwrap())
        );
        // A NOOP TLV of 2 bytes after the addresses.
        let with_tlv = [&v4[..], &[0x04, 0, 2, 0, 0]].concat();
        assert_eq!(parse(&v2(0x21, 0x11, &with_tlv)).unwrap().1, 16 + 17);
        assert!(matches!(
            err(&v2(0x21, 0x11, &[&v4[..], &[0x04, 0, 3, 0, 0]].concat())),
            ProxyHeaderError::V2Tlv
        ));
        assert!(matches!(
            err(&v2(0x21, 0x11, &[&v4[..], &[0x04, 0]].concat())),
            ProxyHeaderError::V2Tlv
        ));
        assert!(matches!(
            err(&v2(0x21, 0x11, &v4[..11])),
            ProxyHeaderError::V2Truncated { need: 12, .. }
        ));
        assert!(matches!(
            err(&v2(0x21, 0x21, &v4)),
            ProxyHeaderError::V2Truncated { need: 36, .. }
        ));
        // LOCAL ignores whatever follows; UNSPEC and AF_UNIX keep the peer.
        assert_eq!(source(&v2(0x20, 0x11, &[1, 2, 3])), None);
        assert_eq!(source(&v2(0x21, 0x00, &[])), None);
        assert_eq!(source(&v2(0x21, 0x31, &[0; 216])), None);
        assert!(matches!(
            err(&v2(0x21, 0x12, &v4)),
            ProxyHeaderError::V2Family(0x12)
        ));
        assert!(matches!(
            err(&v2(0x22, 0x11, &v4)),
            ProxyHeaderError::V2Command(2)
        ));
        assert!(matches!(
            err(&v2(0x11, 0x11, &v4)),
            ProxyHeaderError::V2Version(1)
        ));
        let mut bad_sig = v2(0x21, 0x11, &v4);
        bad_sig[11] = b'X';
        assert!(matches!(err(&bad_sig), ProxyHeaderError::NotProxy));
        assert!(matches!(
            err(&v2(0x21, 0x11, &v4)[..20]),
            ProxyHeaderError::Incomplete
        ));
    }
}
