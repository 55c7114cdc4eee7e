//! Signed webhooks, following Standard Webhooks 1.0: how `validate` tells a data collector's
//! system about a flagged response.
//!
//! - [`WebhookSecret`]: `whsec_<base64>` secrets, parsed, generated and never printed.
//! - [`sign`] / [`signature_header`]: `v1,<base64(HMAC-SHA256(key, "{id}.{ts}.{body}"))>`,
//!   one entry per secret, space-separated, so a sender can sign with the old and the new secret
//!   during a rotation.
//! - [`verify`] / [`verify_headers`]: for receivers (and our tests): constant-time comparison,
//!   any of several signatures and secrets, timestamps within 5 minutes.
//! - [`WebhookSender`]: one signed POST of an [`Envelope`], classified into delivered,
//!   retriable or permanent.
//!
//! Invariant: the signature covers exactly the bytes sent, and `webhook-id` is the caller's
//! (derived from response id and revision), so every retry of one notification carries the same
//! id and receivers can deduplicate; only the timestamp and signature change between attempts.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use reqwest::header::{CONTENT_TYPE, HeaderMap};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::destination::{CheckedResolver, Destinations, Refused};
use crate::error::ConfigError;
use formstream_runtime::http::{HttpError, retry_after};

type HmacSha256 = Hmac<Sha256>;

pub const HEADER_ID: &str = "webhook-id";
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
pub const HEADER_SIGNATURE: &str = "webhook-signature";

/// The prefix of a Standard Webhooks secret.
pub const SECRET_PREFIX: &str = "whsec_";
/// Standard Webhooks asks for keys of 24 to 64 bytes: shorter ones are guessable, longer ones
/// gain nothing with SHA-256.
const KEY_BYTES: std::ops::RangeInclusive<usize> = 24..=64;
/// How far a receiver lets a timestamp drift from its clock: the spec's replay window.
pub const TOLERANCE: Duration = Duration::from_secs(5 * 60);
/// A receiver that takes longer than this is treated as failing (retriable). Standard Webhooks
/// senders commonly allow about 15 s; receivers are told to answer fast and work later.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);

/// A signing key. `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret {
    key: Vec<u8>,
}

/// Why a string is not a webhook secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("a webhook secret starts with \"whsec_\" followed by base64")]
    MissingPrefix,
    #[error("the part of the webhook secret after \"whsec_\" is not valid base64")]
    NotBase64,
    #[error("a webhook secret decodes to {min} to {max} bytes; this one has {got}")]
    BadLength { got: usize, min: usize, max: usize },
}

impl WebhookSecret {
    /// Parses `whsec_<base64>`. The error never echoes the secret.
    pub fn parse(text: &str) -> Result<Self, SecretError> {
        let encoded = text
            .trim()
            .strip_prefix(SECRET_PREFIX)
            .ok_or(SecretError::MissingPrefix)?;
        let key = BASE64.decode(encoded).map_err(|_| SecretError::NotBase64)?;
        if !KEY_BYTES.contains(&key.len()) {
            return Err(SecretError::BadLength {
                got: key.len(),
                min: *KEY_BYTES.start(),
                max: *KEY_BYTES.end(),
            });
        }
        Ok(WebhookSecret { key })
    }

    /// A fresh secret: 24 random bytes from the OS-seeded CSPRNG.
    pub fn generate() -> Self {
        WebhookSecret {
            key: rand::random::<[u8; 24]>().to_vec(),
        }
    }

    /// The `whsec_...` text, for the one place that hands it to the receiver's owner.
    pub fn expose(&self) -> String {
        format!("{SECRET_PREFIX}{}", BASE64.encode(&self.key))
    }

    fn mac(&self, id: &str, timestamp: &str, body: &[u8]) -> HmacSha256 {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = HmacSha256::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(***)")
    }
}

impl std::str::FromStr for WebhookSecret {
    type Err = SecretError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        WebhookSecret::parse(text)
    }
}

/// One signature: `v1,<base64>`.
pub fn sign(secret: &WebhookSecret, id: &str, timestamp: i64, body: &[u8]) -> String {
    let tag = secret
        .mac(id, &timestamp.to_string(), body)
        .finalize()
        .into_bytes();
    format!("v1,{}", BASE64.encode(tag))
}

/// The `webhook-signature` value: one signature per secret, space-separated.
pub fn signature_header(
    secrets: &[WebhookSecret],
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    secrets
        .iter()
        .map(|secret| sign(secret, id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Why a delivery does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the {0} header is missing or not text")]
    MissingHeader(&'static str),
    #[error("the webhook-timestamp is not a number of seconds")]
    BadTimestamp,
    #[error("the webhook-timestamp is {skew_seconds} s away from now (tolerance 300 s)")]
    OutsideTolerance { skew_seconds: i64 },
    #[error("no signature matches any secret")]
    NoMatch,
}

/// Checks a delivery: the timestamp is within [`TOLERANCE`] of `now`, and some `v1` signature
/// of `signatures` is the HMAC of the raw `body` under some secret. Signatures are compared by
/// `hmac`'s constant-time `verify_slice`, so timing tells an attacker nothing.
pub fn verify(
    secrets: &[WebhookSecret],
    id: &str,
    timestamp: &str,
    signatures: &str,
    body: &[u8],
    now: OffsetDateTime,
) -> Result<(), VerifyError> {
    let sent: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| VerifyError::BadTimestamp)?;
    let skew = now.unix_timestamp().saturating_sub(sent);
    if skew.unsigned_abs() > TOLERANCE.as_secs() {
        return Err(VerifyError::OutsideTolerance { skew_seconds: skew });
    }
    let candidates: Vec<Vec<u8>> = signatures
        .split_whitespace()
        .filter_map(|entry| entry.strip_prefix("v1,"))
        .filter_map(|encoded| BASE64.decode(encoded).ok())
        .collect();
    let matches = secrets.iter().any(|secret| {
        let mac = secret.mac(id, timestamp.trim(), body);
        candidates
            .iter()
            .any(|candidate| mac.clone().verify_slice(candidate).is_ok())
    });
    if matches {
        Ok(())
    } else {
        Err(VerifyError::NoMatch)
    }
}

/// [`verify`] with the three headers taken from `headers`.
pub fn verify_headers(
    secrets: &[WebhookSecret],
    headers: &HeaderMap,
    body: &[u8],
    now: OffsetDateTime,
) -> Result<(), VerifyError> {
    let header = |name: &'static str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .ok_or(VerifyError::MissingHeader(name))
    };
    verify(
        secrets,
        header(HEADER_ID)?,
        header(HEADER_TIMESTAMP)?,
        header(HEADER_SIGNATURE)?,
        body,
        now,
    )
}

/// The payload of every webhook: `{type, timestamp, data}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Envelope<T> {
    /// Dotted event name, e.g. `response.flagged`.
    #[serde(rename = "type")]
    pub kind: String,
    /// When the event happened (RFC 3339). The caller's, not the send time, so that every
    /// retry of one notification sends the same body.
    pub timestamp: String,
    pub data: T,
}

impl<T> Envelope<T> {
    pub fn new(kind: impl Into<String>, at: OffsetDateTime, data: T) -> Self {
        Envelope {
            kind: kind.into(),
            // RFC 3339 formats every valid UTC time; an offset outside it cannot occur here.
            timestamp: at.format(&Rfc3339).unwrap_or_default(),
            data,
        }
    }
}

/// A delivery failed; what happens next.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// 408, 429, 5xx, a timeout or a connection failure: try again later, no sooner than
    /// `retry_after` if the receiver said so. Receivers deduplicate on `webhook-id`, so a
    /// retry after an ambiguous failure is safe.
    #[error("webhook delivery failed, retriable (HTTP {status:?}): {reason}")]
    Retriable {
        status: Option<u16>,
        retry_after: Option<Duration>,
        reason: String,
    },
    /// Any other non-2xx, including 410 Gone (the receiver says the endpoint is retired), 401
    /// and 403 (it rejects our signature: a wrong secret is that receiver's configuration, and
    /// other receivers must not pause for it) and 3xx (redirects are not followed: a webhook
    /// URL must be the final one, and following them would let a receiver bounce our signed
    /// POST elsewhere). Never retried.
    #[error("webhook rejected with HTTP {status}: {reason}")]
    Rejected { status: u16, reason: String },
    /// Nothing was sent: no secret, an invalid URL or an unserialisable payload.
    #[error("webhook not sent: {0}")]
    Invalid(String),
}

impl WebhookError {
    pub fn is_retriable(&self) -> bool {
        matches!(self, WebhookError::Retriable { .. })
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            WebhookError::Retriable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// 410: the processor should stop notifying this endpoint, not only drop this message.
    pub fn is_gone(&self) -> bool {
        matches!(self, WebhookError::Rejected { status: 410, .. })
    }

    /// A short, bounded label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            WebhookError::Retriable { .. } => "retriable",
            WebhookError::Rejected { status: 410, .. } => "gone",
            WebhookError::Rejected { .. } => "rejected",
            WebhookError::Invalid(_) => "invalid",
        }
    }
}

/// Classifies a receiver's non-2xx status.
fn classify(status: reqwest::StatusCode, retry_after: Option<Duration>) -> WebhookError {
    let code = status.as_u16();
    if HttpError::from_parts(status, retry_after, "").is_retriable() {
        WebhookError::Retriable {
            status: Some(code),
            retry_after,
            reason: status.to_string(),
        }
    } else {
        WebhookError::Rejected {
            status: code,
            reason: status.to_string(),
        }
    }
}

/// The receiver's answer to a delivered webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub status: u16,
}

/// Posts signed webhooks. Cheap to clone (the HTTP client is shared).
#[derive(Debug, Clone)]
pub struct WebhookSender {
    http: reqwest::Client,
    /// Which addresses deliveries may connect to (see [`crate::destination`]).
    destinations: Destinations,
}

impl WebhookSender {
    /// A sender whose every delivery must complete within `timeout` and connect only to an
    /// address `destinations` allows.
    pub fn new(timeout: Duration, destinations: Destinations) -> Result<Self, ConfigError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            // Every connection resolves through the address check. A proxy would resolve the
            // receiver itself, out of the check's reach, so none is used (not even one from
            // HTTP_PROXY and friends).
            .dns_resolver(Arc::new(CheckedResolver { destinations }))
            .no_proxy()
            .build()
            .map_err(|e| ConfigError::Invalid(format!("building the webhook client: {e}")))?;
        Ok(WebhookSender { http, destinations })
    }

    /// POSTs `envelope` to `url`, signed with every secret in `secrets` (pass the new and the
    /// old secret during a rotation). `id` must be the same for every attempt of one
    /// notification. One attempt; the caller retries.
    pub async fn deliver<T: Serialize>(
        &self,
        url: &str,
        secrets: &[WebhookSecret],
        id: &str,
        envelope: &Envelope<T>,
    ) -> Result<Delivered, WebhookError> {
        if secrets.is_empty() {
            return Err(WebhookError::Invalid(
                "no signing secret for this endpoint".into(),
            ));
        }
        let url = reqwest::Url::parse(url)
            .map_err(|e| WebhookError::Invalid(format!("the webhook URL is invalid: {e}")))?;
        self.destinations
            .check_url(&url)
            .map_err(|refused| WebhookError::Invalid(refused.to_string()))?;
        let body = serde_json::to_vec(envelope)
            .map_err(|e| WebhookError::Invalid(format!("encoding the payload: {e}")))?;
        let timestamp = OffsetDateTime::now_utc().unix_timestamp();
        let signature = signature_header(secrets, id, timestamp, &body);
        // Only the host: a URL's path or query may carry the receiver's own tokens.
        let host = url.host_str().unwrap_or_default().to_owned();
        let response = self
            .http
            .post(url)
            .header(CONTENT_TYPE, "application/json")
            .header(HEADER_ID, id)
            .header(HEADER_TIMESTAMP, timestamp.to_string())
            .header(HEADER_SIGNATURE, signature)
            .body(body)
            .send()
            .await
            .map_err(|e| match refusal(&e) {
                // The name resolved to no allowed address: nothing was sent, and retrying would
                // only ask the same question.
                Some(refused) => WebhookError::Invalid(refused.to_string()),
                None => WebhookError::Retriable {
                    status: None,
                    retry_after: None,
                    reason: if e.is_timeout() {
                        "timed out".to_owned()
                    } else if e.is_connect() {
                        "could not connect".to_owned()
                    } else {
                        "connection failed".to_owned()
                    },
                },
            })?;
        let status = response.status();
        tracing::debug!(webhook_id = id, %host, status = status.as_u16(), "Webhook answered.");
        if status.is_success() {
            return Ok(Delivered {
                status: status.as_u16(),
            });
        }
        Err(classify(status, retry_after(response.headers())))
    }
}

/// The address refusal behind a failed request, if that is why it failed.
fn refusal(error: &reqwest::Error) -> Option<&Refused> {
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(refused) = cause.downcast_ref::<Refused>() {
            return Some(refused);
        }
        source = cause.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both vectors computed independently with Python's `hmac`, `hashlib` and `base64`:
    /// `"v1," + b64encode(hmac.new(b64decode(secret[6:]), f"{id}.{ts}.".encode() + body,
    /// sha256).digest())`. The first is also the example of the Standard Webhooks libraries.
    #[test]
    fn known_answer_vectors() {
        let secret = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            sign(
                &secret,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        let secret = WebhookSecret::parse("whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYX").unwrap();
        let body = r#"{"type":"response.flagged","data":{"city":"पुणे"}}"#;
        assert_eq!(
            sign(&secret, "resp-7f3a.2", 1700000000, body.as_bytes()),
            "v1,AVpWLOqEGTe3DBMsP5zGssWlyXl+4lFbNHfEYr6oiV0="
        );
    }

    fn at(seconds: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(seconds).unwrap()
    }

    #[test]
    fn verify_accepts_the_signature_and_nothing_else() {
        let secret = WebhookSecret::generate();
        let body = br#"{"type":"t","timestamp":"x","data":{}}"#;
        let header = signature_header(std::slice::from_ref(&secret), "id-1", 1000, body);
        let ok = |id: &str, ts: &str, sig: &str, body: &[u8]| {
            verify(std::slice::from_ref(&secret), id, ts, sig, body, at(1000))
        };
        assert_eq!(ok("id-1", "1000", &header, body), Ok(()));
        assert_eq!(ok("id-2", "1000", &header, body), Err(VerifyError::NoMatch));
        assert_eq!(ok("id-1", "1001", &header, body), Err(VerifyError::NoMatch));
        assert_eq!(
            ok("id-1", "1000", &header, b"{}"),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            ok("id-1", "1000", "v1,not-base64!", body),
            Err(VerifyError::NoMatch)
        );
        // Another scheme's entry is ignored, not an error.
        assert_eq!(
            ok("id-1", "1000", &format!("v1a,abc {header}"), body),
            Ok(())
        );
        assert_eq!(
            ok("id-1", "soon", &header, body),
            Err(VerifyError::BadTimestamp)
        );
    }

    #[test]
    fn timestamps_more_than_five_minutes_off_are_rejected() {
        let secret = WebhookSecret::generate();
        let secrets = std::slice::from_ref(&secret);
        let header = signature_header(secrets, "id", 10_000, b"{}");
        let check = |now| verify(secrets, "id", "10000", &header, b"{}", at(now));
        assert_eq!(check(10_300), Ok(()));
        assert_eq!(check(9_700), Ok(()));
        assert_eq!(
            check(10_301),
            Err(VerifyError::OutsideTolerance { skew_seconds: 301 })
        );
        assert_eq!(
            check(9_699),
            Err(VerifyError::OutsideTolerance { skew_seconds: -301 })
        );
    }

    #[test]
    fn rotation_two_signatures_either_secret_verifies() {
        let (old, new) = (WebhookSecret::generate(), WebhookSecret::generate());
        let header = signature_header(&[new.clone(), old.clone()], "id", 50, b"x");
        assert_eq!(header.split(' ').count(), 2);
        for secret in [&old, &new] {
            assert_eq!(
                verify(
                    std::slice::from_ref(secret),
                    "id",
                    "50",
                    &header,
                    b"x",
                    at(50)
                ),
                Ok(())
            );
        }
        // A receiver that already holds both secrets accepts a sender still on the old one.
        let only_old = sign(&old, "id", 50, b"x");
        assert_eq!(
            verify(&[new, old], "id", "50", &only_old, b"x", at(50)),
            Ok(())
        );
    }

    #[test]
    fn secrets_parse_generate_and_never_print() {
        let generated = WebhookSecret::generate();
        let text = generated.expose();
        assert!(text.starts_with("whsec_"));
        assert_eq!(BASE64.decode(&text[6..]).unwrap().len(), 24);
        assert_eq!(WebhookSecret::parse(&text), Ok(generated.clone()));
        assert_ne!(WebhookSecret::generate(), generated);
        assert_eq!(format!("{generated:?}"), "WebhookSecret(***)");

        assert_eq!(
            WebhookSecret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            Err(SecretError::MissingPrefix)
        );
        assert_eq!(
            WebhookSecret::parse("whsec_%%%"),
            Err(SecretError::NotBase64)
        );
        let short = WebhookSecret::parse("whsec_c2hvcnQ=").unwrap_err();
        assert_eq!(
            short,
            SecretError::BadLength {
                got: 5,
                min: 24,
                max: 64
            }
        );
        assert!(short.to_string().contains("24 to 64 bytes"));
    }

    #[test]
    fn outcomes_are_classified() {
        use reqwest::StatusCode;
        let wait = Some(Duration::from_secs(9));
        for status in [408, 429, 500, 502, 503, 504] {
            let error = classify(StatusCode::from_u16(status).unwrap(), wait);
            assert!(error.is_retriable(), "{status}");
            assert_eq!(error.retry_after(), wait);
        }
        for status in [400, 401, 403, 404, 410, 413, 301] {
            let error = classify(StatusCode::from_u16(status).unwrap(), wait);
            assert!(!error.is_retriable(), "{status}");
        }
        assert!(classify(StatusCode::GONE, None).is_gone());
        assert_eq!(classify(StatusCode::GONE, None).kind(), "gone");
    }

    #[test]
    fn the_envelope_has_the_standard_shape() {
        let envelope = Envelope::new(
            "response.flagged",
            at(1_700_000_000),
            serde_json::json!({"response_id": "r1"}),
        );
        let value = serde_json::to_value(&envelope).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "type": "response.flagged",
                "timestamp": "2023-11-14T22:13:20Z",
                "data": {"response_id": "r1"}
            })
        );
    }
}
