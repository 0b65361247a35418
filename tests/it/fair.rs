//! Fair shares after the upgrade (`client_messages_per_sec`, `backend_bytes_per_sec`, ...):
//! a side over its share is slowed by backpressure, and closed with 1008 once it has stayed
//! over for `rate_grace`; its neighbours on the same route do not notice.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

/// One echo's round trip.
async fn round_trip(ws: &mut Ws, n: usize) -> Duration {
    let started = Instant::now();
    let text = format!("ping {n}");
    ws.send(Message::text(text.clone())).await.unwrap();
    assert_eq!(next_data(ws).await, Message::text(text));
    started.elapsed()
}

fn median(mut d: Vec<Duration>) -> Duration {
    d.sort();
    d[d.len() / 2]
}

#[tokio::test]
async fn a_flooding_client_is_slowed_then_closed_with_1008_while_its_neighbour_is_served() {
    let echo = EchoBackend::spawn().await;
    let gw = Gateway::spawn(&format!(
        "{}client_messages_per_sec = 50\nclient_messages_burst = 50\nrate_grace = \"1s\"\n",
        route("r", "/", &[echo.url()])
    ))
    .await;
    let (mut neighbour, _) = connect(&gw.url("/")).await;
    let mut before = Vec::new();
    for n in 0..20 {
        before.push(round_trip(&mut neighbour, n).await);
    }

    // The flooder sends 500 messages a second (10 times its share) and counts its echoes.
    let (flooder, _) = connect(&gw.url("/")).await;
    let (mut sink, mut stream) = flooder.split();
    let sender = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(2));
        let mut sent = 0u32;
        // Until the proxy closes the session: then a send fails.
        while sink
            .send(Message::text(format!("flood {sent}")))
            .await
            .is_ok()
        {
            sent += 1;
            tick.tick().await;
        }
        sent
    });
    let started = Instant::now();
    let reader = tokio::spawn(async move {
        let mut echoed = 0u32;
        loop {
            match tokio::time::timeout(STEP, stream.next()).await {
                Ok(Some(Ok(Message::Text(_)))) => echoed += 1,
                Ok(Some(Ok(Message::Close(Some(c))))) => {
                    return (
                        echoed,
                        u16::from(c.code),
                        c.reason.to_string(),
                        started.elapsed(),
                    );
                }
                other => panic!("the flooder got {other:?} after {echoed} echoes"),
            }
        }
    });
    let mut during = Vec::new();
    for n in 0..20 {
        during.push(round_trip(&mut neighbour, n).await);
    }
    let (echoed, code, reason, closed_after) = reader.await.unwrap();
    let sent = sender.await.unwrap();
    assert_eq!((code, reason.as_str()), (1008, "rate limit"));
    // Held for the grace, not at once: it was slowed first. (Coarse bounds: a busy machine
    // only delays the close.)
    assert!(
        closed_after >= Duration::from_secs(1),
        "closed after {closed_after:?}"
    );
    // Slowed: far fewer echoes than it sent, about what its share allows (the burst and one
    // read of what had piled up, then 50 a second).
    assert!(
        echoed < sent,
        "echoed {echoed} of {sent} messages: nothing was held back"
    );
    // The backend saw the session end with 1001 (the client's share, not the backend, ended it).
    let closes = echo.wait_closes(1).await;
    assert_eq!(closes[0].as_ref().map(|c| c.0), Some(1001), "{closes:?}");
    // The neighbour went on, at its usual speed (a generous bound for a shared machine).
    let (b, d) = (median(before), median(during));
    assert!(
        d <= b * 10 + Duration::from_millis(20),
        "the neighbour's median round trip went from {b:?} to {d:?} during the flood"
    );
    round_trip(&mut neighbour, 99).await;
}

#[tokio::test]
async fn a_backend_over_its_byte_share_is_slowed_not_closed_when_the_grace_is_off() {
    let echo = EchoBackend::spawn().await;
    let gw = Gateway::spawn(&format!(
        "{}backend_bytes_per_sec = \"1MiB\"\nbackend_bytes_burst = \"64KiB\"\nrate_grace = \"off\"\n",
        route("r", "/", &[echo.url()])
    ))
    .await;
    let (mut ws, _) = connect(&gw.url("/")).await;
    // 3 MiB echoed back: the client's direction is free, the backend's held to 1 MiB/s.
    let payload: Vec<u8> = (0..3 << 20).map(|i| (i % 251) as u8).collect();
    let started = Instant::now();
    ws.send(Message::binary(payload.clone())).await.unwrap();
    let back = next_data(&mut ws).await;
    let took = started.elapsed();
    assert_eq!(back, Message::binary(payload), "every byte, in order");
    // At most the burst and one read (64 KiB each) ahead of the rate: 3 MiB take at least
    // (3 MiB - 128 KiB) / 1 MiB/s.
    assert!(
        took >= Duration::from_millis(2_800),
        "3 MiB at 1 MiB/s arrived in {took:?}"
    );
    round_trip(&mut ws, 1).await;
}
