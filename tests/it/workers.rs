//! `[runtime] scheduler = "per_worker"`: every worker accepts on every listener and serves
//! what it accepted to the end. The test's own runtime is worker 0; these tests block it, so
//! whatever is served meanwhile is served by another worker. The backend and the client run
//! on runtimes of their own, on threads of their own, for the same reason.

use std::sync::mpsc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::support::*;

/// Longer than any step here takes; a step that takes it has hung.
const STEP: Duration = Duration::from_secs(20);

/// An echo backend on a runtime of its own, on a thread of its own, for as long as the
/// returned sender lives.
fn backend_on_its_own_thread() -> (EchoBackend, mpsc::Sender<()>) {
    let (ready_tx, ready_rx) = mpsc::channel();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            ready_tx.send(EchoBackend::spawn().await).unwrap();
            // Serve until the test drops its sender.
            tokio::task::spawn_blocking(move || {
                let _ = stop_rx.recv();
            })
            .await
            .unwrap();
        });
    });
    (
        ready_rx.recv_timeout(STEP).expect("backend started"),
        stop_tx,
    )
}

/// Runs `client` on a thread of its own with a runtime of its own.
fn on_own_thread<F, T>(client: F) -> mpsc::Receiver<T>
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _ = tx.send(rt.block_on(client));
    });
    rx
}

fn config(backend: &EchoBackend, scheduler: &str) -> String {
    format!(
        "[runtime]\nworkers = 2\nscheduler = \"{scheduler}\"\n\n{}",
        route("echo", "/", &[backend.url()])
    )
}

/// The whole session (accept, both handshakes, 200 messages, the closing handshake) is
/// served while worker 0 cannot run: by worker 1.
#[tokio::test]
async fn another_worker_serves_whole_sessions_while_the_first_is_blocked() {
    let (backend, _serving) = backend_on_its_own_thread();
    let gw = Gateway::spawn(&config(&backend, "per_worker")).await;
    let url = gw.url("/");
    let done = on_own_thread(async move {
        let mut out = Vec::new();
        for session in 0..3 {
            let (mut ws, _) = connect(&url).await;
            for i in 0..200 {
                let text = format!("session {session} message {i}");
                ws.send(Message::text(text.clone())).await.unwrap();
                assert_eq!(next_data(&mut ws).await, Message::text(text));
            }
            send_close(&mut ws, CloseCode::Normal, "done").await;
            out.push(next_close(&mut ws).await.code);
        }
        out
    });
    // Blocks this thread, and with it worker 0, until the client is done.
    let codes = done
        .recv_timeout(STEP)
        .expect("no other worker served the sessions");
    assert_eq!(codes, [CloseCode::Normal; 3]);
    assert_eq!(backend.wait_closes(3).await.len(), 3);
}

/// The shutdown drains the sessions another worker serves: each side gets 1001, and the
/// shutdown waits for them.
#[tokio::test]
async fn the_shutdown_drains_every_workers_sessions() {
    let (backend, _serving) = backend_on_its_own_thread();
    let mut gw = Gateway::spawn(&config(&backend, "per_worker")).await;
    let url = gw.url("/");
    let (opened_tx, opened_rx) = mpsc::channel();
    let closed = on_own_thread(async move {
        let mut sessions = Vec::new();
        for _ in 0..5 {
            let (mut ws, _) = connect(&url).await;
            ws.send(Message::text("hello")).await.unwrap();
            assert_eq!(next_data(&mut ws).await, Message::text("hello"));
            sessions.push(ws);
        }
        opened_tx.send(()).unwrap();
        let mut codes = Vec::new();
        for ws in &mut sessions {
            let close = next_close(ws).await;
            ws.close(None).await.ok();
            while ws.next().await.is_some() {}
            codes.push(close.code);
        }
        codes
    });
    // Worker 0 is blocked while the sessions open: they are worker 1's.
    opened_rx
        .recv_timeout(STEP)
        .expect("no other worker opened the sessions");
    assert_eq!(gw.handle().sessions().len(), 5);
    let report = gw.shutdown().await;
    assert_eq!(report.sessions_ended, 0, "every session closed in time");
    let codes = tokio::task::spawn_blocking(move || closed.recv_timeout(STEP))
        .await
        .unwrap()
        .expect("the client saw its sessions close");
    assert_eq!(codes, [CloseCode::Away; 5]);
    let at_backend = backend.wait_closes(5).await;
    assert!(
        at_backend
            .iter()
            .all(|c| c.as_ref().map(|(code, _)| *code) == Some(1001)),
        "{at_backend:?}"
    );
}

/// A reload reaches every worker's accept loops: a removed listener stops accepting on all of
/// them (its socket closes once the last worker lets go), and a changed one is served by
/// another worker's new loop while worker 0 is blocked.
#[tokio::test]
async fn a_reload_reaches_every_workers_accept_loops() {
    let (backend, _serving) = backend_on_its_own_thread();
    let runtime = "[runtime]\nworkers = 2\n\n";
    let first = "[[listener]]\nlisten = \"127.0.0.1:0\"\n\n";
    let second = "[[listener]]\nlisten = \"127.0.0.2:0\"\n\n";
    let r = route("echo", "/", &[backend.url()]);
    let gw = Gateway::spawn(&format!("{runtime}{first}{second}{r}")).await;
    let second_addr = gw.handle().listener_addrs()[1];

    let changed = "[[listener]]\nlisten = \"127.0.0.1:0\"\nhandshake_timeout = \"3s\"\n\n";
    let next = wsgate::config::from_toml_str(&format!("{runtime}{changed}{r}")).unwrap();
    let report = gw.handle().reload(next).expect("reload");
    assert_eq!(report.listeners.changed, ["127.0.0.1:0"]);
    assert_eq!(report.listeners.removed, ["127.0.0.2:0"]);

    // Each worker drops its copy of the removed socket when its loop sees the stop.
    let deadline = tokio::time::Instant::now() + STEP;
    while tokio::net::TcpStream::connect(second_addr).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the removed listener still accepts"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let url = gw.url("/");
    let done = on_own_thread(async move {
        let (mut ws, _) = connect(&url).await;
        ws.send(Message::text("after the reload")).await.unwrap();
        let echoed = next_data(&mut ws).await;
        send_close(&mut ws, CloseCode::Normal, "").await;
        echoed
    });
    let echoed = done
        .recv_timeout(STEP)
        .expect("no other worker serves the changed listener");
    assert_eq!(echoed, Message::text("after the reload"));
}
