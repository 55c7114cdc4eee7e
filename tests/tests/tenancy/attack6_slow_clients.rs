//! Attack 6: slow clients. Globex opens a thousand connections to the real gateway and trickles
//! its headers a byte at a time (slowloris), or sends headers and then too little body, or opens
//! connections and says nothing. Acme's collectors still get their 202 at once; each slow
//! connection is closed (or answered 408) when its limit passes; and past the connection limit
//! new connections wait for a free slot instead of growing the server without bound.

use std::time::{Duration, Instant};

use formstream_tests::{GatewayOptions, TestGateway, spawn_gateway, valid_response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

/// A request line and the first headers, never finished.
const PARTIAL_HEAD: &str = "POST /v1/forms/x/responses HTTP/1.1\r\nHost: gateway\r\n";

async fn connect(gateway: &TestGateway) -> TcpStream {
    let address = gateway.address.trim_start_matches("http://");
    TcpStream::connect(address)
        .await
        .expect("connecting to the gateway")
}

/// Waits (up to `deadline`) until the server closes `stream` or answers on it; returns what it
/// answered (empty when it just closed), or None when it did neither in time.
async fn answer_or_close(stream: &mut TcpStream, deadline: Duration) -> Option<String> {
    let mut read = Vec::new();
    let mut buffer = [0u8; 4096];
    let until = Instant::now() + deadline;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buffer)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(String::from_utf8_lossy(&read).into_owned()),
            Ok(Ok(n)) => {
                read.extend_from_slice(&buffer[..n]);
                // One complete answer (head and body) is enough.
                let text = String::from_utf8_lossy(&read).into_owned();
                if let Some((head, body)) = text.split_once("\r\n\r\n")
                    && head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length: ")
                                .map(|v| v.trim().parse::<usize>())
                        })
                        .and_then(Result::ok)
                        .is_some_and(|length| body.len() >= length)
                {
                    return Some(text);
                }
            }
        }
    }
}

/// Acme submits a response the ordinary way; returns the status and how long it took.
async fn acme_submits(gateway: &TestGateway, form_id: &str, name: &str) -> (u16, Duration) {
    let started = Instant::now();
    let (status, body) = gateway.submit(form_id, &valid_response(name)).await;
    assert!(status == 202 || status == 201, "{status}: {body}");
    (status, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_slowloris_connections_do_not_delay_another_organisations_submissions() {
    let header_timeout = Duration::from_secs(3);
    let gateway = spawn_gateway(GatewayOptions::default().arg("--http-header-timeout", "3s")).await;
    let form_id = gateway.create_typical_form().await;
    // The first record to a fresh topic waits for its partitions' leaders: not measured.
    acme_submits(&gateway, &form_id, "acme warm-up").await;

    // Globex's slow connections: each sends a partial head, then a header byte every 200 ms.
    let slow = 1_000;
    let mut trickling = JoinSet::new();
    for _ in 0..slow {
        let mut stream = connect(&gateway).await;
        stream
            .write_all(PARTIAL_HEAD.as_bytes())
            .await
            .expect("sending a partial head");
        trickling.spawn(async move {
            let opened = Instant::now();
            let mut ticks = tokio::time::interval(Duration::from_millis(200));
            let mut buffer = [0u8; 256];
            loop {
                tokio::select! {
                    _ = ticks.tick() => {
                        if stream.write_all(b"X").await.is_err() {
                            return opened.elapsed();
                        }
                    }
                    read = stream.read(&mut buffer) => match read {
                        Ok(0) | Err(_) => return opened.elapsed(),
                        // Whatever the server says (a 408 before closing), it then closes.
                        Ok(_) => {}
                    },
                }
                assert!(
                    opened.elapsed() < Duration::from_secs(60),
                    "a slowloris connection was held open for a minute"
                );
            }
        });
    }

    // While they trickle, acme's submissions are answered at once.
    let mut took = Vec::new();
    for i in 0..20 {
        took.push(
            acme_submits(&gateway, &form_id, &format!("acme {i}"))
                .await
                .1,
        );
    }
    assert!(
        took.iter().all(|t| *t < Duration::from_secs(1)),
        "acme's submissions beside {slow} slow connections took {took:?}"
    );

    // Every slow connection is closed by the header timeout, though it kept sending.
    let mut held = Vec::with_capacity(slow);
    while let Some(closed_after) = trickling.join_next().await {
        held.push(closed_after.expect("a slowloris task"));
    }
    held.sort();
    assert!(
        held[0] >= header_timeout - Duration::from_millis(500),
        "closed before the header timeout: {:?}",
        held[0]
    );
    assert!(
        held[slow - 1] < header_timeout * 4,
        "one was held {:?} (header timeout {header_timeout:?})",
        held[slow - 1]
    );
    gateway.finish().await;
}

#[tokio::test]
async fn a_trickled_body_gets_408_and_silent_connections_close() {
    let gateway = spawn_gateway(
        GatewayOptions::default()
            .arg("--http-header-timeout", "30s")
            .arg("--http-request-timeout", "2s")
            .arg("--http-idle-timeout", "1s"),
    )
    .await;
    let form_id = gateway.create_typical_form().await;

    // Complete headers, then a tenth of the body announced: 408 once the request timeout passes.
    let mut stream = connect(&gateway).await;
    let head = format!(
        "POST /v1/forms/{form_id}/responses HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"answers\": ",
        formstream_tests::ACME_KEY
    );
    stream.write_all(head.as_bytes()).await.expect("sending");
    let started = Instant::now();
    let answer = answer_or_close(&mut stream, Duration::from_secs(20))
        .await
        .expect("the gateway answers a stalled body");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
    assert!(answer.contains("/problems/request-timeout"), "{answer}");
    assert!(
        started.elapsed() >= Duration::from_millis(1_500),
        "{:?}",
        started.elapsed()
    );

    // A connection that never says anything, and a kept-alive one after its answer, are closed
    // by the idle timeout (the header timeout is 30 s here).
    let mut silent = connect(&gateway).await;
    let closed = answer_or_close(&mut silent, Duration::from_secs(20)).await;
    assert_eq!(closed.as_deref(), Some(""), "a silent connection is closed");

    let mut kept = connect(&gateway).await;
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
        .await
        .expect("sending");
    let answer = answer_or_close(&mut kept, Duration::from_secs(10))
        .await
        .expect("healthz answers");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let closed = answer_or_close(&mut kept, Duration::from_secs(20)).await;
    assert_eq!(
        closed.as_deref(),
        Some(""),
        "an idle kept-alive connection is closed"
    );

    // Acme, meanwhile, unaffected.
    acme_submits(&gateway, &form_id, "acme").await;
    gateway.finish().await;
}

#[tokio::test]
async fn past_the_connection_limit_a_connection_waits_for_a_free_slot() {
    let gateway = spawn_gateway(
        GatewayOptions::default()
            .arg("--http-max-connections", "20")
            .arg("--http-header-timeout", "60s")
            .arg("--http-idle-timeout", "60s"),
    )
    .await;
    // The readiness probe's connection may still be open: wait until all 20 slots are globex's.
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(connect(&gateway).await);
    }
    let mut waiting = connect(&gateway).await;
    waiting
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n")
        .await
        .expect("sending");
    // The reqwest client's kept-alive connection from the readiness probe holds one slot too:
    // drop every held connection but one at a time until the waiting one is answered.
    let mut answered = answer_or_close(&mut waiting, Duration::from_millis(700)).await;
    assert!(
        answered.is_none(),
        "answered past the connection limit: {answered:?}"
    );
    while answered.is_none() {
        let freed = held.pop().expect("a held connection to free");
        drop(freed);
        answered = answer_or_close(&mut waiting, Duration::from_secs(5)).await;
    }
    let answer = answered.unwrap_or_default();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        held.len() >= 18,
        "answered only after {} connections closed",
        20 - held.len()
    );
    drop(held);
    gateway.finish().await;
}
