//! permessage-deflate at the edge: a route that strips the offer, and one that counts
//! inflated message sizes against `max_message_inflated`.

use futures_util::SinkExt;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::support::*;

/// A client request offering permessage-deflate and another extension.
fn offering(url: &str, extensions: &str) -> http::Request<()> {
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("sec-websocket-extensions", extensions.parse().unwrap());
    req
}

#[tokio::test]
async fn strip_removes_the_deflate_offer_and_relays_messages() {
    let backend = EchoBackend::spawn().await;
    let gw = Gateway::spawn(&format!(
        "{}permessage_deflate = \"strip\"\n",
        route("r", "/", &[backend.url()])
    ))
    .await;
    let req = offering(
        &gw.url("/"),
        "permessage-deflate; client_max_window_bits, x-foo; a=1",
    );
    let (mut ws, resp) =
        tokio_tungstenite::connect_async_with_config(req, Some(ws_config()), false)
            .await
            .unwrap();
    assert_eq!(resp.headers().get("sec-websocket-extensions"), None);
    let seen = backend.last_request();
    // Only the deflate offer is gone; the other extension passes untouched.
    assert_eq!(seen.header("sec-websocket-extensions"), Some("x-foo; a=1"));
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("hello"));
}

#[tokio::test]
async fn allow_passes_the_offer_unchanged() {
    let backend = EchoBackend::spawn().await;
    let gw = Gateway::spawn(&route("r", "/", &[backend.url()])).await;
    let req = offering(&gw.url("/"), "permessage-deflate; client_max_window_bits");
    let (_ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let seen = backend.last_request();
    assert_eq!(
        seen.header("sec-websocket-extensions"),
        Some("permessage-deflate; client_max_window_bits")
    );
}

/// A backend that accepts permessage-deflate although it was stripped from its offer is
/// refused (502): its compressed frames would reach a client that never negotiated them.
#[tokio::test]
async fn strip_refuses_a_backend_that_compresses_anyway() {
    let response =
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
        Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n"
            .to_vec();
    let (addr, seen) = scripted_backend(response).await;
    let gw = Gateway::spawn(&format!(
        "{}permessage_deflate = \"strip\"\n",
        route("r", "/", &[format!("ws://{addr}")])
    ))
    .await;
    let (mut stream, resp) = raw_exchange(
        gw.addr,
        upgrade_request("/", "Sec-WebSocket-Extensions: permessage-deflate\r\n").as_bytes(),
    )
    .await;
    assert_eq!(resp.status, 502);
    let head = seen.lock().unwrap()[0].to_ascii_lowercase();
    assert!(!head.contains("permessage-deflate"), "{head}");
    let _ = stream.shutdown().await;
}
