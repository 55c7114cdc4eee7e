//! A local webhook receiver that checks Standard Webhooks signatures, for tests of the code that
//! notifies data collectors.
//!
//! It verifies each delivery the way a careful receiver does (HMAC-SHA256 over
//! `{id}.{timestamp}.{raw body}`, any `v1` signature under any of its secrets, timestamps within
//! 5 minutes) and answers 401 when that fails. Verification is written here from the spec with
//! the `hmac` and `base64` crates, not with `formstream_notify::webhook::verify`, so that a bug
//! shared by our signer and our verifier cannot make a test pass.
//!
//! Invariant: every delivery is recorded, duplicates and refused ones included, in arrival order,
//! with what the receiver answered, so tests can assert on what a receiver really saw. A test
//! scripts failures (the next N deliveries get 500/503/429, optionally with `Retry-After`),
//! slowness and an outage (refused connections).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::twilio_fake::{FakeServer, lock};

/// The path deliveries are posted to.
pub const HOOK_PATH: &str = "/hooks/formstream";

/// One delivery as received.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedWebhook {
    pub id: Option<String>,
    pub timestamp: Option<String>,
    pub signatures: Option<String>,
    /// The body parsed as JSON (`Null` if it is not JSON).
    pub body: Value,
    /// Whether some signature verified under some secret, with a fresh timestamp.
    pub verified: bool,
    /// The status the receiver answered.
    pub answered: u16,
    /// When it arrived.
    pub at: Instant,
}

#[derive(Default)]
struct Receiver {
    /// Decoded keys of the secrets this receiver accepts.
    keys: Vec<Vec<u8>>,
    deliveries: Vec<ReceivedWebhook>,
    /// (status, Retry-After seconds) for the next deliveries, in order.
    failures: VecDeque<(u16, Option<u64>)>,
    /// How long to wait before answering.
    delay: Duration,
}

/// A running receiver. Clones share the same server and state.
#[derive(Clone)]
pub struct WebhookReceiver {
    state: Arc<Mutex<Receiver>>,
    server: Arc<FakeServer>,
}

impl WebhookReceiver {
    /// Starts a receiver that accepts signatures under any of `secrets` (`whsec_...`).
    pub async fn start(secrets: &[&str]) -> Self {
        let state = Arc::new(Mutex::new(Receiver::default()));
        let router = Router::new()
            .route(HOOK_PATH, post(receive))
            .with_state(state.clone());
        let receiver = WebhookReceiver {
            state,
            server: Arc::new(FakeServer::start(router).await),
        };
        receiver.set_secrets(secrets);
        receiver
    }

    /// The URL to deliver to.
    pub fn url(&self) -> String {
        format!("{}{HOOK_PATH}", self.server.url())
    }

    /// Replaces the accepted secrets (a receiver's side of a rotation).
    pub fn set_secrets(&self, secrets: &[&str]) {
        let keys = secrets
            .iter()
            .map(|s| {
                let encoded = s.strip_prefix("whsec_").expect("a whsec_ secret");
                BASE64.decode(encoded).expect("a base64 secret")
            })
            .collect();
        self.state().keys = keys;
    }

    /// The next `n` deliveries are answered `status` (with `Retry-After` when given).
    pub fn fail_next(&self, n: usize, status: u16, retry_after: Option<u64>) {
        let mut state = self.state();
        state
            .failures
            .extend(std::iter::repeat_n((status, retry_after), n));
    }

    /// Every answer comes after `delay` (zero to stop being slow).
    pub fn set_delay(&self, delay: Duration) {
        self.state().delay = delay;
    }

    /// Refuses connections until [`WebhookReceiver::come_back`].
    pub fn go_down(&self) {
        self.server.stop();
    }

    pub async fn come_back(&self) {
        self.server.restart().await;
    }

    /// Every delivery, in arrival order.
    pub fn deliveries(&self) -> Vec<ReceivedWebhook> {
        self.state().deliveries.clone()
    }

    /// The deliveries carrying `webhook-id: id` (retries of one notification).
    pub fn deliveries_of(&self, id: &str) -> Vec<ReceivedWebhook> {
        self.state()
            .deliveries
            .iter()
            .filter(|d| d.id.as_deref() == Some(id))
            .cloned()
            .collect()
    }

    fn state(&self) -> MutexGuard<'_, Receiver> {
        lock(&self.state)
    }
}

/// Standard Webhooks verification, from the spec.
fn verifies(keys: &[Vec<u8>], headers: &HeaderMap, body: &[u8]) -> bool {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(id), Some(timestamp), Some(signatures)) = (
        get("webhook-id"),
        get("webhook-timestamp"),
        get("webhook-signature"),
    ) else {
        return false;
    };
    let Ok(sent) = timestamp.parse::<i64>() else {
        return false;
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    if (now - sent).abs() > 300 {
        return false;
    }
    let signed = [id.as_bytes(), b".", timestamp.as_bytes(), b".", body].concat();
    signatures
        .split(' ')
        .filter_map(|entry| entry.strip_prefix("v1,"))
        .filter_map(|b64| BASE64.decode(b64).ok())
        .any(|signature| {
            keys.iter().any(|key| {
                let mut mac =
                    Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
                mac.update(&signed);
                mac.verify_slice(&signature).is_ok()
            })
        })
}

async fn receive(
    State(state): State<Arc<Mutex<Receiver>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (answer, delay) = {
        let mut state = lock(&state);
        let verified = verifies(&state.keys, &headers, &body);
        let answer = if verified {
            state.failures.pop_front()
        } else {
            Some((401, None))
        };
        state.deliveries.push(ReceivedWebhook {
            id: header("webhook-id"),
            timestamp: header("webhook-timestamp"),
            signatures: header("webhook-signature"),
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
            verified,
            answered: answer.map_or(204, |(status, _)| status),
            at: Instant::now(),
        });
        (answer, state.delay)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    match answer {
        None => StatusCode::NO_CONTENT.into_response(),
        Some((status, retry_after)) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut response = status.into_response();
            if let Some(seconds) = retry_after {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            }
            response
        }
    }
}
