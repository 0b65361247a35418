//! IP and socket addresses written as their `Display` writes them, an IPv4 one without the
//! formatter's detours.
//!
//! `Ipv4Addr`'s `Display` writes each octet through the integer formatter's padding pass,
//! and `SocketAddr`'s adds another `write!` around it: about 2,000 instructions per address
//! in callgrind, and every handshake writes several (the forwarding headers, the client in
//! both access records). Here an IPv4 address is written digit by digit into a stack buffer.
//! IPv6 addresses, with their zero compression, stay with the standard library. The port's
//! digits, and the access records' counters (`telemetry/text.rs`), go through [`decimal`].

use std::fmt::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// `value` in decimal, as `{value}` writes it, written into `buf`.
pub fn decimal(value: u64, buf: &mut [u8; 20]) -> &str {
    let digits = value.checked_ilog10().unwrap_or(0) as usize + 1;
    let mut rest = value;
    for d in buf[..digits].iter_mut().rev() {
        *d = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    // Digits only.
    std::str::from_utf8(&buf[..digits]).unwrap_or_default()
}

/// `ip` in dotted decimal, written into `buf`.
pub fn ipv4(ip: Ipv4Addr, buf: &mut [u8; 15]) -> &str {
    let mut n = 0;
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            buf[n] = b'.';
            n += 1;
        }
        if octet >= 100 {
            buf[n] = b'0' + octet / 100;
            n += 1;
        }
        if octet >= 10 {
            buf[n] = b'0' + octet / 10 % 10;
            n += 1;
        }
        buf[n] = b'0' + octet % 10;
        n += 1;
    }
    // Digits and dots only.
    std::str::from_utf8(&buf[..n]).unwrap_or_default()
}

/// Appends `ip` as its `Display` writes it.
pub fn push_ip(s: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => s.push_str(ipv4(v4, &mut [0; 15])),
        IpAddr::V6(v6) => {
            let _ = write!(s, "{v6}");
        }
    }
}

/// A socket address that displays as `SocketAddr` does (`1.2.3.4:80`, `[::1]:80`).
#[derive(Debug, Clone, Copy)]
pub struct Addr(pub SocketAddr);

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            // A width or precision pads the whole address: the standard library's way.
            SocketAddr::V4(a) if f.width().is_none() && f.precision().is_none() => {
                f.write_str(ipv4(*a.ip(), &mut [0; 15]))?;
                f.write_str(":")?;
                f.write_str(decimal(u64::from(a.port()), &mut [0; 20]))
            }
            other => fmt::Display::fmt(&other, f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addresses() -> Vec<SocketAddr> {
        let mut out: Vec<SocketAddr> = [
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "10.0.9.100:8080",
            "1.20.199.7:9",
            "127.0.0.1:10",
            "192.0.2.1:99",
            "192.0.2.1:100",
            "[2001:db8::1]:443",
            "[::ffff:10.0.0.1]:1",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        out.extend(
            (0..=255u8).map(|o| SocketAddr::from(([o, 255 - o, o / 3, 99], u16::from(o) * 257))),
        );
        out
    }

    #[test]
    fn decimal_as_the_formatter_writes_it() {
        for v in [0, 1, 9, 10, 99, 100, 65_535, 1_000_000_007, u64::MAX] {
            assert_eq!(decimal(v, &mut [0; 20]), v.to_string());
        }
    }

    #[test]
    fn the_same_text_as_display() {
        for a in addresses() {
            assert_eq!(Addr(a).to_string(), a.to_string());
            assert_eq!(format!("{:>30}", Addr(a)), format!("{a:>30}"));
            let mut s = String::from("x");
            push_ip(&mut s, a.ip());
            assert_eq!(s, format!("x{}", a.ip()));
        }
    }
}
