//! What an HTTP API's answer means for a record: the one mapping from status, `Retry-After` and
//! error body to a [`Failure`], so that a processor that calls an HTTP API does not write its own.
//!
//! Invariant (Vector's `RetryLogic`): a 2xx is done; 408, 429 and 5xx, and a request that got no
//! answer at all (a timeout, a refused connection), are retriable, no sooner than the answer's
//! `Retry-After`; every other status is permanent. An answer's error text never holds a phone
//! number in full (it reaches logs and dead letters).

use std::fmt;
use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{Response, StatusCode};
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc2822;

use formstream_core::redact::scrub_phones;

use crate::processor::Failure;

/// Longest part of an error body kept in a failure's message (it ends up in dead letters).
const MAX_DETAIL_CHARS: usize = 300;

/// A non-2xx answer, read: its status, when to try again, and what its body said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError {
    pub status: u16,
    /// The answer's `Retry-After`, when it had one that could be read.
    pub retry_after: Option<Duration>,
    /// The error code in the body, if any: Twilio's `code` (`20429`), Google's `error.status`
    /// (`RESOURCE_EXHAUSTED`).
    pub code: Option<String>,
    /// The body's message (Twilio's `message`, Google's `error.message`), or its first
    /// characters, or the status's reason phrase when the body is empty; phone numbers in it
    /// redacted.
    pub message: String,
}

impl HttpError {
    /// Reads a non-2xx answer (its body, at most once).
    pub async fn read(answer: Response) -> Self {
        let status = answer.status();
        let retry_after = retry_after(answer.headers());
        let body = answer.text().await.unwrap_or_default();
        Self::from_parts(status, retry_after, &body)
    }

    /// An answer from its parts: `body` as Twilio (`{"code", "message"}`), Google (`{"error":
    /// {"code", "status", "message"}}`) or anyone else (its text) writes it.
    pub fn from_parts(status: StatusCode, retry_after: Option<Duration>, body: &str) -> Self {
        let json: Value = serde_json::from_str(body).unwrap_or(Value::Null);
        let error = json.get("error").filter(|e| e.is_object()).unwrap_or(&json);
        let text = |field: &str| match error.get(field)? {
            Value::String(text) => Some(text.clone()),
            Value::Number(number) => Some(number.to_string()),
            _ => None,
        };
        let code = if error.get("status").is_some_and(Value::is_string) {
            text("status")
        } else {
            text("code")
        };
        let message = text("message")
            .or_else(|| (!body.trim().is_empty()).then(|| body.trim().to_owned()))
            .unwrap_or_else(|| status.canonical_reason().unwrap_or("no reason").to_owned());
        HttpError {
            status: status.as_u16(),
            retry_after,
            code,
            // Providers quote what they were sent (Twilio: "The 'To' number +1555... is not a
            // valid phone number"); this message reaches logs and dead letters.
            message: scrub_phones(&message.chars().take(MAX_DETAIL_CHARS).collect::<String>()),
        }
    }

    /// 408, 429 or 5xx: worth trying again later.
    pub fn is_retriable(&self) -> bool {
        matches!(self.status, 408 | 429 | 500..=599)
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HTTP {}", self.status)?;
        if let Some(code) = &self.code {
            write!(f, " ({code})")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for HttpError {}

impl From<HttpError> for Failure {
    fn from(error: HttpError) -> Self {
        match (error.is_retriable(), error.retry_after) {
            (true, Some(after)) => Failure::retry_after(error, after),
            (true, None) => Failure::retriable(error),
            (false, _) => Failure::permanent(error),
        }
    }
}

/// What a sent request means for the record: `Ok` with the answer for a 2xx, else the
/// [`Failure`] its answer (or the lack of one) means.
pub async fn outcome(sent: Result<Response, reqwest::Error>) -> Result<Response, Failure> {
    match sent {
        Ok(answer) if answer.status().is_success() => Ok(answer),
        Ok(answer) => Err(HttpError::read(answer).await.into()),
        // No answer: the request may or may not have been processed; the record is retried and
        // the receiver deduplicates (the processor sends an idempotency key).
        Err(error) => Err(Failure::retriable(error.without_url())),
    }
}

/// The `Retry-After` of an answer: delay-seconds or an HTTP date (RFC 9110 §10.2.3). A date in
/// the past means "now" (zero); an unreadable value is ignored, so the caller's own backoff
/// applies rather than a guess.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = OffsetDateTime::parse(value, &Rfc2822).ok()?;
    let wait = at - OffsetDateTime::now_utc();
    Some(Duration::try_from(wait).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;

    #[test]
    fn a_number_quoted_in_an_error_body_is_redacted() {
        let twilio = r#"{"code": 21211, "message": "The 'To' number +14155550140 is not a valid phone number.", "status": 400}"#;
        let error = HttpError::from_parts(StatusCode::BAD_REQUEST, None, twilio);
        assert_eq!(
            error.message,
            "The 'To' number +1******0140 is not a valid phone number."
        );
        let google = r#"{"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": "Invalid value: +919876543210"}}"#;
        let error = HttpError::from_parts(StatusCode::BAD_REQUEST, None, google);
        assert_eq!(error.message, "Invalid value: +91******3210");
    }

    fn with(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_str(value).expect("a header value"),
        );
        headers
    }

    #[test]
    fn retry_after_reads_seconds_and_dates_and_ignores_garbage() {
        assert_eq!(retry_after(&with("7")), Some(Duration::from_secs(7)));
        assert_eq!(
            retry_after(&with("Wed, 21 Oct 2015 07:28:00 GMT")),
            Some(Duration::ZERO)
        );
        let soon = OffsetDateTime::now_utc() + time::Duration::seconds(120);
        let date = soon.format(&Rfc2822).expect("a date");
        let waited = retry_after(&with(&date)).expect("a wait");
        assert!(waited > Duration::from_secs(100) && waited <= Duration::from_secs(120));
        assert_eq!(retry_after(&with("soon")), None);
        assert_eq!(retry_after(&HeaderMap::new()), None);
    }

    fn read(status: u16, body: &str) -> HttpError {
        let status = StatusCode::from_u16(status).expect("a status");
        HttpError::from_parts(status, None, body)
    }

    #[test]
    fn error_bodies_are_read_as_twilio_google_and_everyone_else_write_them() {
        let twilio = read(
            429,
            r#"{"code": 20429, "message": "Too Many Requests", "status": 429}"#,
        );
        assert_eq!(twilio.code.as_deref(), Some("20429"));
        assert_eq!(twilio.message, "Too Many Requests");
        let google = read(
            429,
            r#"{"error": {"code": 429, "message": "Quota exceeded", "status": "RESOURCE_EXHAUSTED"}}"#,
        );
        assert_eq!(google.code.as_deref(), Some("RESOURCE_EXHAUSTED"));
        assert_eq!(google.message, "Quota exceeded");
        let text = read(502, "  upstream down\n");
        assert_eq!((text.code, text.message.as_str()), (None, "upstream down"));
        let empty = read(503, "");
        assert_eq!(empty.message, "Service Unavailable");
        assert_eq!(read(500, &"x".repeat(1000)).message.len(), MAX_DETAIL_CHARS);
        assert_eq!(
            read(400, r#"{"code": 21211, "message": "Invalid 'To'"}"#).to_string(),
            "HTTP 400 (21211): Invalid 'To'"
        );
    }

    #[test]
    fn only_408_429_and_5xx_are_retried_and_retry_after_is_kept() {
        for status in [408, 429, 500, 502, 503, 504] {
            assert!(read(status, "").is_retriable(), "{status}");
        }
        for status in [400, 401, 403, 404, 409, 410, 413, 422, 301] {
            let failure = Failure::from(read(status, ""));
            assert!(matches!(failure, Failure::Permanent(_)), "{status}");
        }
        let limited = HttpError::from_parts(
            StatusCode::TOO_MANY_REQUESTS,
            Some(Duration::from_secs(3)),
            "",
        );
        assert!(matches!(
            Failure::from(limited),
            Failure::Retriable { retry_after: Some(after), .. } if after == Duration::from_secs(3)
        ));
    }
}
