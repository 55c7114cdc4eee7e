//! What can go wrong when sending an SMS, in terms of what the caller may do next.
//!
//! Invariant: each variant says whether the message was created. Only [`SmsError::Ambiguous`]
//! leaves that open, and only after it must the caller reconcile (list what was sent, see
//! [`crate::TwilioClient::find_sent`]) before sending again; after every other error a re-send
//! cannot double a message.
//!
//! How a processor maps these onto the runtime's `Failure`:
//! - `RateLimited`, `Unavailable` → retriable (with `retry_after` when given);
//! - `Ambiguous` → retriable, and the next attempt starts by reconciling;
//! - `Unauthorized` → retriable, deliberately: bad or revoked credentials fail every record, so
//!   dead-lettering would empty the topic into the DLQ while an operator fixes a secret. As a
//!   retriable failure it opens the circuit breaker, pauses the partitions and loses nothing
//!   (promise 4); `kind()` lets the processor alert on it distinctly;
//! - `Permanent` → permanent: dead-lettered with its Twilio code.

use std::time::Duration;

/// One attempt to send (or list) failed; see the module docs for what each variant allows.
#[derive(Debug, thiserror::Error)]
pub enum SmsError {
    /// 429 or code 20429: Twilio did not process the request. Always safe to retry, no sooner
    /// than `retry_after` when Twilio said so.
    #[error("rate limited by Twilio (retry after {retry_after:?})")]
    RateLimited { retry_after: Option<Duration> },

    /// The request never reached the service (connection refused, DNS, TLS handshake, connect
    /// timeout), or the outbox write was rolled back. Nothing was created; safe to retry.
    #[error("SMS service unavailable, nothing was sent: {0}")]
    Unavailable(String),

    /// A 5xx, a timeout or a connection lost after the request was sent, or a success answer
    /// that cannot be read: the message MAY exist. Reconcile before re-sending.
    #[error("SMS outcome unknown, the message may have been created: {0}")]
    Ambiguous(String),

    /// 401 or 403: the account SID or auth token is wrong or lacks permission. Nothing was sent.
    #[error("Twilio rejected the credentials (HTTP {status}, code {code:?}): {message}")]
    Unauthorized {
        status: u16,
        code: Option<u32>,
        message: String,
    },

    /// Twilio refused this message for good (21211 invalid To, 21408 region, 21610 STOP,
    /// 21614 not mobile, 21617 too long, most other 4xx), or the body was refused before any
    /// request (`status` is `None` then). Never retry.
    #[error("SMS rejected (HTTP {status:?}, code {code:?}): {message}")]
    Permanent {
        status: Option<u16>,
        code: Option<u32>,
        message: String,
    },
}

impl SmsError {
    /// Whether the same request may be made again (after reconciling, for `Ambiguous`).
    pub fn is_retriable(&self) -> bool {
        !matches!(self, SmsError::Permanent { .. })
    }

    /// Whether the caller must look for the message before sending it again.
    pub fn needs_reconciliation(&self) -> bool {
        matches!(self, SmsError::Ambiguous(_))
    }

    /// The wait the service asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            SmsError::RateLimited { retry_after } => *retry_after,
            _ => None,
        }
    }

    /// A short, bounded label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            SmsError::RateLimited { .. } => "rate_limited",
            SmsError::Unavailable(_) => "unavailable",
            SmsError::Ambiguous(_) => "ambiguous",
            SmsError::Unauthorized { .. } => "unauthorized",
            SmsError::Permanent { .. } => "permanent",
        }
    }

    /// The Twilio error code, when there is one.
    pub fn code(&self) -> Option<u32> {
        match self {
            SmsError::Unauthorized { code, .. } | SmsError::Permanent { code, .. } => *code,
            _ => None,
        }
    }
}

/// A configuration that cannot work, found at startup rather than on the first message.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Invalid(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}
