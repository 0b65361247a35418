//! What the soak watches in the proxy: its resident memory and open descriptors from /proc,
//! and a few of its Prometheus metrics from the admin listener.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// The metrics the soak follows, each summed over its labels.
pub const SESSIONS_OPEN: &str = "wsgate_sessions_open";
pub const SESSIONS_OPENED: &str = "wsgate_sessions_opened_total";
pub const REFUSED: &str = "wsgate_handshakes_refused_total";
pub const ENDED: &str = "wsgate_sessions_ended_total";

const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
const SCRAPE_MAX: usize = 16 << 20;

/// One row of the CSV.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    pub elapsed_s: f64,
    pub rss_kib: Option<u64>,
    pub fds: Option<u64>,
    pub sessions_open: Option<f64>,
    pub sessions_opened: Option<f64>,
    pub refused: Option<f64>,
    pub client_active: u64,
    pub client_opened: u64,
    pub messages_echoed: u64,
    pub bytes_echoed: u64,
    pub errors: u64,
}

pub const CSV_HEADER: &str = "elapsed_s,rss_kib,open_fds,wsgate_sessions_open,\
wsgate_sessions_opened_total,wsgate_handshakes_refused_total,client_sessions_active,\
client_sessions_opened,messages_echoed,bytes_echoed,errors";

impl Sample {
    pub fn csv_row(&self) -> String {
        fn opt<T: ToString>(v: Option<T>) -> String {
            v.map(|v| v.to_string()).unwrap_or_default()
        }
        format!(
            "{:.1},{},{},{},{},{},{},{},{},{},{}",
            self.elapsed_s,
            opt(self.rss_kib),
            opt(self.fds),
            opt(self.sessions_open),
            opt(self.sessions_opened),
            opt(self.refused),
            self.client_active,
            self.client_opened,
            self.messages_echoed,
            self.bytes_echoed,
            self.errors
        )
    }
}

/// VmRSS of a process, in KiB.
pub fn rss_kib(pid: u32) -> Result<u64, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("no VmRSS in /proc/{pid}/status"))
}

/// How many descriptors a process has open.
pub fn open_fds(pid: u32) -> Result<u64, String> {
    let dir =
        std::fs::read_dir(format!("/proc/{pid}/fd")).map_err(|e| format!("/proc/{pid}/fd: {e}"))?;
    Ok(dir.count() as u64)
}

/// A plain `http://host:port/path` URL.
pub struct MetricsUrl {
    authority: String,
    path: String,
}

impl MetricsUrl {
    pub fn parse(url: &str) -> Result<MetricsUrl, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("--metrics {url}: only http:// URLs"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/metrics"),
        };
        if authority.is_empty() {
            return Err(format!("--metrics {url}: no host"));
        }
        Ok(MetricsUrl {
            authority: authority.to_string(),
            path: path.to_string(),
        })
    }

    /// GET the exposition over HTTP/1.0 (so the body is never chunked and ends with the
    /// connection).
    pub async fn scrape(&self) -> Result<Exposition, String> {
        let fetch = async {
            let mut s = TcpStream::connect(&self.authority)
                .await
                .map_err(|e| format!("connect {}: {e}", self.authority))?;
            let req = format!(
                "GET {} HTTP/1.0\r\nHost: {}\r\nAccept: text/plain\r\n\r\n",
                self.path, self.authority
            );
            s.write_all(req.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            let mut buf = Vec::new();
            (&mut s)
                .take(SCRAPE_MAX as u64)
                .read_to_end(&mut buf)
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(buf)
        };
        let raw = timeout(SCRAPE_TIMEOUT, fetch)
            .await
            .map_err(|_| format!("no answer from {} in {SCRAPE_TIMEOUT:?}", self.authority))??;
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or("the metrics answer has no end of head")?;
        let status = head.lines().next().unwrap_or_default();
        if !status.contains(" 200") {
            return Err(format!("GET {}: {status}", self.path));
        }
        Ok(Exposition::parse(body))
    }
}

/// A Prometheus text exposition: each sample by metric name and labels.
#[derive(Default)]
pub struct Exposition {
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Exposition {
    pub fn parse(text: &str) -> Exposition {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(parse_line)
            .collect();
        Exposition { samples }
    }

    /// The sum of a metric's samples, or None if it has none.
    pub fn sum(&self, name: &str) -> Option<f64> {
        let mut found = false;
        let sum = self
            .samples
            .iter()
            .filter(|(n, _, _)| n == name)
            .inspect(|_| found = true)
            .map(|(_, _, v)| v)
            .sum();
        found.then_some(sum)
    }

    /// A metric summed by the values of one label.
    pub fn sum_by(&self, name: &str, label: &str) -> BTreeMap<String, f64> {
        let mut by = BTreeMap::new();
        for (n, labels, v) in &self.samples {
            if n == name {
                let key = labels.get(label).cloned().unwrap_or_default();
                *by.entry(key).or_insert(0.0) += v;
            }
        }
        by
    }
}

/// `name{a="x",b="y"} value`: label values may hold escaped quotes and backslashes.
fn parse_line(line: &str) -> Option<(String, BTreeMap<String, String>, f64)> {
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_string();
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices();
        let mut key = String::new();
        loop {
            let (i, c) = chars.next()?;
            match c {
                '}' => {
                    rest = &inner[i + 1..];
                    break;
                }
                ',' | ' ' => {}
                '=' => {
                    chars.next().filter(|(_, c)| *c == '"')?;
                    let mut value = String::new();
                    loop {
                        match chars.next()?.1 {
                            '\\' => value.push(chars.next()?.1),
                            '"' => break,
                            c => value.push(c),
                        }
                    }
                    labels.insert(std::mem::take(&mut key), value);
                }
                c => key.push(c),
            }
        }
    }
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some((name, labels, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_and_groups_samples() {
        let text = "# HELP wsgate_sessions_open sessions\n\
            # TYPE wsgate_sessions_open gauge\n\
            wsgate_sessions_open{route=\"a\",backend=\"ws://x\"} 3\n\
            wsgate_sessions_open{route=\"b\",backend=\"ws://y\"} 4\n\
            wsgate_sessions_ended_total{route=\"a\",outcome=\"client_closed\",closed_by=\"client\"} 10\n\
            wsgate_sessions_ended_total{route=\"b\",outcome=\"client_closed\",closed_by=\"client\"} 5\n\
            wsgate_sessions_ended_total{route=\"a\",outcome=\"client_gone\",closed_by=\"client\"} 2\n\
            odd{v=\"a \\\"quoted\\\" }\"} 1.5\n\
            wsgate_uptime_seconds 12.5\n";
        let e = Exposition::parse(text);
        assert_eq!(e.sum(SESSIONS_OPEN), Some(7.0));
        assert_eq!(e.sum("wsgate_uptime_seconds"), Some(12.5));
        assert_eq!(e.sum("odd"), Some(1.5));
        assert_eq!(e.sum(REFUSED), None);
        let by = e.sum_by(ENDED, "outcome");
        assert_eq!(by.get("client_closed"), Some(&15.0));
        assert_eq!(by.get("client_gone"), Some(&2.0));
    }

    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        assert!(rss_kib(pid).unwrap() > 0);
        let before = open_fds(pid).unwrap();
        let f = std::fs::File::open("/proc/self/status").unwrap();
        assert_eq!(open_fds(pid).unwrap(), before + 1);
        drop(f);
    }

    #[test]
    fn metrics_urls() {
        let u = MetricsUrl::parse("http://127.0.0.1:9901/metrics").unwrap();
        assert_eq!(
            (u.authority.as_str(), u.path.as_str()),
            ("127.0.0.1:9901", "/metrics")
        );
        assert_eq!(MetricsUrl::parse("http://h:1").unwrap().path, "/metrics");
        assert!(MetricsUrl::parse("https://h:1/metrics").is_err());
        assert!(MetricsUrl::parse("http:///metrics").is_err());
    }
}
