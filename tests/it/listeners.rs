//! Listeners follow the config on reload: an added one is bound and serves, a removed one
//! stops accepting while its sessions go on, a changed one (here its TLS certificate) serves
//! new connections with the new settings on the same port, and a listener that cannot be
//! bound fails the whole reload, changing nothing.

use futures_util::SinkExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::support::tls::*;
use crate::support::*;

const FIRST: &str = "[[listener]]\nlisten = \"127.0.0.1:0\"\n\n";
/// Another loopback address, so that its configured address (its identity) differs.
const SECOND: &str = "[[listener]]\nlisten = \"127.0.0.2:0\"\n\n";

fn config(toml: &str) -> wsgate::Config {
    wsgate::config::from_toml_str(toml)
        .unwrap_or_else(|e| panic!("test config is invalid: {e:#?}\n--- config ---\n{toml}"))
}

async fn echoes(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
    assert_eq!(next_data(ws).await, Message::text(text));
}

#[tokio::test]
async fn a_reload_adds_removes_and_changes_listeners_and_sessions_go_on() {
    let echo = EchoBackend::spawn().await;
    let r = route("r", "/", &[echo.url()]);
    let gw = Gateway::spawn(&format!("{FIRST}{r}")).await;
    let (mut on_first, _) = connect(&gw.url("/")).await;

    let report = gw
        .handle()
        .reload(config(&format!("{FIRST}{SECOND}{r}")))
        .expect("reload");
    assert_eq!(report.listeners.added, ["127.0.0.2:0"]);
    assert!(report.listeners.removed.is_empty() && report.listeners.changed.is_empty());
    let addrs = gw.handle().listener_addrs();
    assert_eq!(addrs.len(), 2, "{addrs:?}");
    assert_eq!(addrs[0], gw.addr, "the first listener keeps its socket");
    let second = addrs[1];
    let (mut on_second, _) = connect(&format!("ws://{second}/")).await;
    echoes(&mut on_first, "first").await;
    echoes(&mut on_second, "second").await;

    // The first listener changes (another handshake timeout), the second goes.
    let changed = "[[listener]]\nlisten = \"127.0.0.1:0\"\nhandshake_timeout = \"3s\"\n\n";
    let report = gw
        .handle()
        .reload(config(&format!("{changed}{r}")))
        .expect("reload");
    assert_eq!(report.listeners.changed, ["127.0.0.1:0"]);
    assert_eq!(report.listeners.removed, ["127.0.0.2:0"]);
    assert!(report.listeners.added.is_empty());
    assert_eq!(gw.handle().listener_addrs(), [gw.addr]);
    let refused = TcpStream::connect(second).await;
    assert!(refused.is_err(), "the removed listener still accepts");
    // Sessions on both go on untouched; the changed listener serves new sessions.
    echoes(&mut on_first, "first, after").await;
    echoes(&mut on_second, "second, after its listener went").await;
    let (mut again, _) = connect(&gw.url("/")).await;
    echoes(&mut again, "new on the changed listener").await;
    assert!(echo.closes.lock().unwrap().is_empty());
}

/// A listener moved to another address on its port (one interface to all of them, and
/// back): the kernel refuses the new bind while the old socket is open, so the reload binds
/// the two to share the port, and new connections go to the new socket from the moment the
/// reload returns. Sessions on the old listener go on.
#[tokio::test]
async fn a_listener_moved_to_another_address_on_its_port_takes_over_at_once() {
    let echo = EchoBackend::spawn().await;
    let r = route("r", "/", &[echo.url()]);
    let gw = Gateway::spawn(&format!("{FIRST}{r}")).await;
    let port = gw.addr.port();
    let (mut first, _) = connect(&gw.url("/")).await;

    // Connections still go to 127.0.0.1 (the wildcard accepts them too); the test's traffic
    // stays on loopback.
    let all = format!("0.0.0.0:{port}");
    let report = gw
        .handle()
        .reload(config(&format!("[[listener]]\nlisten = \"{all}\"\n\n{r}")))
        .expect("a listener moved on its port must reload");
    assert_eq!(report.listeners.added, std::slice::from_ref(&all));
    assert_eq!(report.listeners.removed, ["127.0.0.1:0"]);
    assert_eq!(gw.handle().listener_addrs(), [all.parse().unwrap()]);
    let (mut second, _) = connect(&gw.url("/")).await;
    echoes(&mut second, "on the wildcard").await;

    let one = format!("127.0.0.1:{port}");
    let report = gw
        .handle()
        .reload(config(&format!("[[listener]]\nlisten = \"{one}\"\n\n{r}")))
        .expect("and back");
    assert_eq!(report.listeners.added, std::slice::from_ref(&one));
    assert_eq!(report.listeners.removed, [all]);
    let (mut third, _) = connect(&gw.url("/")).await;
    echoes(&mut third, "on 127.0.0.1 again").await;
    echoes(&mut first, "first, after two moves").await;
    echoes(&mut second, "second, after its listener moved").await;
    assert!(echo.closes.lock().unwrap().is_empty());

    // A port held by someone else still fails the reload.
    let foreign = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
    let taken = format!("0.0.0.0:{}", foreign.local_addr().unwrap().port());
    let errors = gw
        .handle()
        .reload(config(&format!(
            "[[listener]]\nlisten = \"{one}\"\n\n[[listener]]\nlisten = \"{taken}\"\n\n{r}"
        )))
        .expect_err("a port another socket holds cannot be shared");
    assert_eq!(errors.errors[0].key, "listener[1].listen", "{errors}");
    echoes(&mut third, "unchanged").await;
}

#[tokio::test]
async fn a_listener_that_cannot_be_bound_fails_the_reload_and_changes_nothing() {
    let echo = EchoBackend::spawn().await;
    let gw = Gateway::spawn(&format!("{FIRST}{}", route("r", "/r", &[echo.url()]))).await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap();
    let result = gw.handle().reload(config(&format!(
        "{FIRST}[[listener]]\nlisten = \"{busy}\"\n\n{}{}",
        route("r", "/r", &[echo.url()]),
        route("other", "/other", &[echo.url()])
    )));
    let errors = result.expect_err("a reload whose listener cannot be bound must fail");
    // Named by its place in the file, the second listener, and its line.
    assert_eq!(errors.errors[0].key, "listener[1].listen", "{errors}");
    assert_eq!(errors.errors[0].line, Some(5), "{errors}");
    assert!(
        errors.errors[0].message.contains(&busy.to_string()),
        "{errors}"
    );
    assert_eq!(*gw.handle().generations().borrow(), 1, "nothing changed");
    assert_eq!(gw.handle().listener_addrs(), [gw.addr]);
    let (_, response) = raw_exchange(gw.addr, upgrade_request("/other", "").as_bytes()).await;
    assert_eq!(response.status, 404, "the new route must not serve");
}

#[tokio::test]
async fn a_changed_certificate_serves_new_connections_on_the_same_port() {
    let ca = TestCa::new();
    let echo = EchoBackend::spawn().await;
    let r = route("r", "/", &[echo.url()]);
    let (cert_a, key_a) = ca.leaf("a", &["localhost"]);
    let (cert_b, key_b) = ca.leaf("b", &["localhost"]);
    let gw = Gateway::spawn(&format!("{}{r}", tls_listener(&cert_a, &key_a, ""))).await;
    let (tls, served) = tls_connect(&ca, &gw, "localhost").await;
    assert_eq!(served, der(&cert_a));
    let (mut before, _) = wss_upgrade(&gw, tls).await;

    let report = gw
        .handle()
        .reload(config(&format!("{}{r}", tls_listener(&cert_b, &key_b, ""))))
        .expect("reload");
    assert_eq!(report.listeners.changed, ["127.0.0.1:0"]);
    let (_, served) = tls_connect(&ca, &gw, "localhost").await;
    assert_eq!(
        served,
        der(&cert_b),
        "new connections get the new certificate"
    );
    before.send(Message::text("still here")).await.unwrap();
    assert_eq!(next_data(&mut before).await, Message::text("still here"));
}

fn der(pem: &std::path::Path) -> rustls::pki_types::CertificateDer<'static> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_file(pem).unwrap()
}
