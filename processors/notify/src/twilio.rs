//! A client of Twilio Programmable Messaging's REST API (the real paths, auth and error codes;
//! the base URL is configurable so that tests point it at a local fake).
//!
//! Invariant: [`TwilioClient::send`] makes exactly one create request (or none, for a body Twilio
//! would refuse) and classifies its outcome by HTTP status first and Twilio error code second,
//! because Twilio splits and renames codes over time while the status classes stay stable. The
//! create API has no idempotency key, so the only protection against doubles is the caller's
//! ledger plus [`TwilioClient::find_sent`] after an [`SmsError::Ambiguous`].

use std::fmt;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use formstream_schemas::Secret;
use reqwest::{StatusCode, Url};
use serde::{Deserialize, Deserializer};
use time::Date;
use time::macros::format_description;

use crate::error::{ConfigError, SmsError};
use crate::redact;
use crate::segments::check_body;
use formstream_runtime::http::{HttpError, retry_after};

/// Twilio's production API.
pub const DEFAULT_BASE_URL: &str = "https://api.twilio.com";

/// Who the message is from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Originator {
    /// A Twilio number of the account (E.164), a short code or an alphanumeric sender id.
    From(String),
    /// A Messaging Service (MG...): Twilio picks the number from its pool.
    MessagingService(String),
}

/// How to reach Twilio. `Debug` is safe to log: the token is a [`Secret`].
#[derive(Debug, Clone)]
pub struct TwilioConfig {
    /// The account (AC...): part of every path and the Basic-auth user.
    pub account_sid: String,
    /// The Basic-auth password. Only [`TwilioClient`] ever exposes it, to put it on the wire.
    pub auth_token: Secret,
    pub originator: Originator,
    /// `https://api.twilio.com` in production; a fake's address in tests.
    pub base_url: String,
    /// The whole request, answer included. A send that runs past it is ambiguous.
    pub timeout: Duration,
    /// Connecting only. Kept separate and short because a connect failure is unambiguous (the
    /// request was never sent), so a down service is reported as such quickly.
    pub connect_timeout: Duration,
    /// Where Twilio posts later statuses (sent, delivered, failed...), if anywhere.
    pub status_callback: Option<String>,
}

impl TwilioConfig {
    /// A config for Twilio's production API. The 10 s timeout is well above Twilio's usual
    /// sub-second answer, so that a timeout (an ambiguous outcome that costs a reconciliation)
    /// means trouble rather than a slow moment; the 5 s connect timeout lets an outage show fast.
    pub fn new(
        account_sid: impl Into<String>,
        auth_token: impl Into<Secret>,
        originator: Originator,
    ) -> Self {
        TwilioConfig {
            account_sid: account_sid.into(),
            auth_token: auth_token.into(),
            originator,
            base_url: DEFAULT_BASE_URL.to_owned(),
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            status_callback: None,
        }
    }
}

/// The 201 answer to a create: the message as Twilio queued it.
#[derive(Clone, Deserialize, PartialEq, Eq)]
pub struct SentMessage {
    /// `SM...`, 34 characters: what the caller's ledger records.
    pub sid: String,
    /// `queued`, `accepted` (Messaging Service) or `scheduled`.
    pub status: String,
    #[serde(default)]
    pub to: String,
    #[serde(default, deserialize_with = "lenient_u32")]
    pub error_code: Option<u32>,
    #[serde(default)]
    pub error_message: Option<String>,
    /// Twilio sends it as a string ("2").
    #[serde(default, deserialize_with = "lenient_u32")]
    pub num_segments: Option<u32>,
    #[serde(default)]
    pub price: Option<String>,
    #[serde(default)]
    pub uri: Option<String>,
    /// RFC 2822, as Twilio formats it.
    #[serde(default)]
    pub date_created: Option<String>,
}

impl fmt::Debug for SentMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SentMessage")
            .field("sid", &self.sid)
            .field("status", &self.status)
            .field("to", &redact::phone(&self.to))
            .field("error_code", &self.error_code)
            .field("num_segments", &self.num_segments)
            .field("date_created", &self.date_created)
            .finish_non_exhaustive()
    }
}

/// One message of a listing, as much as reconciliation needs.
#[derive(Clone, Deserialize, PartialEq, Eq)]
pub struct MessageRecord {
    pub sid: String,
    #[serde(default)]
    pub to: String,
    #[serde(default)]
    pub body: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub date_created: Option<String>,
    #[serde(default)]
    pub date_sent: Option<String>,
    #[serde(default, deserialize_with = "lenient_u32")]
    pub error_code: Option<u32>,
}

impl fmt::Debug for MessageRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageRecord")
            .field("sid", &self.sid)
            .field("to", &redact::phone(&self.to))
            .field("body_chars", &self.body.chars().count())
            .field("status", &self.status)
            .field("date_created", &self.date_created)
            .finish_non_exhaustive()
    }
}

/// Which messages to list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListFilter {
    /// Only messages to this number (E.164).
    pub to: Option<String>,
    /// Only messages sent on or after this day (UTC): Twilio's `DateSent>=`.
    pub sent_on_or_after: Option<Date>,
    /// Messages per page: Twilio's default is 50 and its maximum 1000.
    pub page_size: u32,
}

impl Default for ListFilter {
    fn default() -> Self {
        ListFilter {
            to: None,
            sent_on_or_after: None,
            page_size: 50,
        }
    }
}

/// A page of `GET .../Messages.json`.
#[derive(Deserialize)]
struct Page {
    #[serde(default)]
    messages: Vec<MessageRecord>,
    /// Absolute path (with query) of the next page; absent or null on the last one.
    #[serde(default)]
    next_page_uri: Option<String>,
}

/// A read has no effect, so it never needs reconciling; a create may.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Operation {
    Create,
    Read,
}

/// Sends messages and lists them. Cheap to clone (the HTTP client is shared).
#[derive(Clone)]
pub struct TwilioClient {
    http: reqwest::Client,
    /// Shared, so that clones (one per task) cost a reference count.
    config: Arc<TwilioConfig>,
    /// `{base}/2010-04-01/Accounts/{sid}/Messages.json`, checked once at construction.
    messages_url: Arc<Url>,
}

impl fmt::Debug for TwilioClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TwilioClient")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl TwilioClient {
    /// Checks the configuration (a bad base URL or account SID fails here, not on every send).
    pub fn new(config: TwilioConfig) -> Result<Self, ConfigError> {
        let config_error = ConfigError::Invalid;
        if config.account_sid.is_empty()
            || !config
                .account_sid
                .bytes()
                .all(|b| b.is_ascii_alphanumeric())
        {
            return Err(config_error(format!(
                "the Twilio account SID {:?} is not an SID",
                config.account_sid
            )));
        }
        let mut base = Url::parse(&config.base_url)
            .map_err(|e| config_error(format!("the Twilio base URL is invalid: {e}")))?;
        // A base with a path (a proxy's prefix) keeps it: `join` replaces the last segment
        // unless the path ends with a slash.
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        let messages_url = base
            .join(&format!(
                "2010-04-01/Accounts/{}/Messages.json",
                config.account_sid
            ))
            .map_err(|e| config_error(format!("the Twilio base URL is invalid: {e}")))?;
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.connect_timeout)
            .build()
            .map_err(|e| config_error(format!("building the HTTP client: {e}")))?;
        Ok(TwilioClient {
            http,
            config: Arc::new(config),
            messages_url: Arc::new(messages_url),
        })
    }

    pub fn config(&self) -> &TwilioConfig {
        &self.config
    }

    /// Creates one message. One request at most; see [`SmsError`] for what each failure allows.
    pub async fn send(&self, to: &str, body: &str) -> Result<SentMessage, SmsError> {
        check_body(body)?;
        let mut form: Vec<(&str, &str)> = vec![("To", to), ("Body", body)];
        match &self.config.originator {
            Originator::From(number) => form.push(("From", number)),
            Originator::MessagingService(sid) => form.push(("MessagingServiceSid", sid)),
        }
        if let Some(callback) = &self.config.status_callback {
            form.push(("StatusCallback", callback));
        }
        let response = self
            .authorized(self.http.post(self.messages_url.as_ref().clone()))
            .form(&form)
            .send()
            .await
            .map_err(|e| transport_error(&e, Operation::Create))?;
        let status = response.status();
        let wait = retry_after(response.headers());
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            let error = classify(status, wait, &text, Operation::Create);
            tracing::debug!(to = %redact::phone(to), %status, kind = error.kind(), code = ?error.code(), "Twilio refused a message.");
            return Err(error);
        }
        // Created: from here on, anything unreadable leaves us not knowing the sid.
        let text = response
            .text()
            .await
            .map_err(|e| SmsError::Ambiguous(format!("reading Twilio's {status} answer: {e}")))?;
        let sent: SentMessage = serde_json::from_str(&text).map_err(|e| {
            SmsError::Ambiguous(format!("Twilio's {status} answer is not a message: {e}"))
        })?;
        tracing::debug!(to = %redact::phone(to), sid = %sent.sid, status = %sent.status, segments = ?sent.num_segments, "Twilio accepted a message.");
        Ok(sent)
    }

    /// One cheap authenticated read (the first message of the account's list, page size 1), for
    /// a circuit breaker's probe: `Ok` when Twilio answers and accepts the credentials. It never
    /// creates anything.
    pub async fn probe(&self) -> Result<(), SmsError> {
        let mut url = self.messages_url.as_ref().clone();
        url.query_pairs_mut().append_pair("PageSize", "1");
        self.page(url).await.map(|_| ())
    }

    /// Every message matching `filter`, following `next_page_uri` to the last page.
    pub async fn list(&self, filter: &ListFilter) -> Result<Vec<MessageRecord>, SmsError> {
        let mut all = Vec::new();
        self.walk(filter, |message| {
            all.push(message);
            ControlFlow::<MessageRecord>::Continue(())
        })
        .await?;
        Ok(all)
    }

    /// The message to `to`, sent on or after `since` (UTC day), whose body contains `reference`;
    /// stops paging at the first match. Any status counts: a message that exists, even failed,
    /// was created, and re-sending is the caller's decision.
    ///
    /// The reference should be short ASCII letters and digits (e.g. a response id prefix and
    /// revision): a Messaging Service's smart encoding may rewrite other characters.
    pub async fn find_sent(
        &self,
        to: &str,
        reference: &str,
        since: Date,
    ) -> Result<Option<MessageRecord>, SmsError> {
        let filter = ListFilter {
            to: Some(to.to_owned()),
            sent_on_or_after: Some(since),
            // The maximum: reconciliation wants few round trips.
            page_size: 1000,
        };
        self.walk(&filter, |message| {
            if message.to == to && message.body.contains(reference) {
                ControlFlow::Break(message)
            } else {
                ControlFlow::Continue(())
            }
        })
        .await
    }

    /// Visits listed messages page by page until `visit` breaks or the pages end.
    async fn walk<B>(
        &self,
        filter: &ListFilter,
        mut visit: impl FnMut(MessageRecord) -> ControlFlow<B>,
    ) -> Result<Option<B>, SmsError> {
        let mut url = self.messages_url.as_ref().clone();
        {
            let mut query = url.query_pairs_mut();
            if let Some(to) = &filter.to {
                query.append_pair("To", to);
            }
            if let Some(day) = filter.sent_on_or_after {
                let day = day
                    .format(format_description!("[year]-[month]-[day]"))
                    .map_err(|e| SmsError::Permanent {
                        status: None,
                        code: None,
                        message: format!("formatting the date filter: {e}"),
                    })?;
                // `DateSent>=2024-05-01` on the wire is the key `DateSent>` with the value.
                query.append_pair("DateSent>", &day);
            }
            query.append_pair("PageSize", &filter.page_size.clamp(1, 1000).to_string());
        }
        loop {
            let page = self.page(url.clone()).await?;
            for message in page.messages {
                if let ControlFlow::Break(found) = visit(message) {
                    return Ok(Some(found));
                }
            }
            let Some(next) = page.next_page_uri.filter(|n| !n.is_empty()) else {
                return Ok(None);
            };
            let next = self
                .messages_url
                .join(&next)
                .map_err(|e| SmsError::Unavailable(format!("Twilio's next page URI: {e}")))?;
            if next == url {
                // A service that hands back the same page would otherwise loop forever.
                return Err(SmsError::Unavailable(
                    "Twilio's next page is the current page".to_owned(),
                ));
            }
            url = next;
        }
    }

    async fn page(&self, url: Url) -> Result<Page, SmsError> {
        let response = self
            .authorized(self.http.get(url))
            .send()
            .await
            .map_err(|e| transport_error(&e, Operation::Read))?;
        let status = response.status();
        let wait = retry_after(response.headers());
        let text = response
            .text()
            .await
            .map_err(|e| transport_error(&e, Operation::Read))?;
        if !status.is_success() {
            return Err(classify(status, wait, &text, Operation::Read));
        }
        serde_json::from_str(&text).map_err(|e| {
            SmsError::Unavailable(format!("Twilio's {status} listing is not a page: {e}"))
        })
    }

    fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        request.basic_auth(
            &self.config.account_sid,
            Some(self.config.auth_token.expose()),
        )
    }
}

/// A failure before any answer. A connect failure means the request never left; anything later
/// (a timeout, a reset) may have hit Twilio after it read the request.
fn transport_error(error: &reqwest::Error, operation: Operation) -> SmsError {
    // Never the URL: it is ours and harmless, but the error chain is what helps.
    let detail = error_chain(error);
    if error.is_connect() || operation == Operation::Read {
        SmsError::Unavailable(detail)
    } else if error.is_timeout() {
        SmsError::Ambiguous(format!("timed out waiting for Twilio: {detail}"))
    } else {
        SmsError::Ambiguous(detail)
    }
}

fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Classifies a non-2xx answer: HTTP status first, Twilio code second. The body is Twilio's
/// `{"code": 21211, "message": "...", "more_info": "...", "status": 400}`, read by the runtime's
/// [`HttpError`].
fn classify(status: StatusCode, wait: Option<Duration>, body: &str, op: Operation) -> SmsError {
    let error = HttpError::from_parts(status, wait, body);
    let code = error
        .code
        .as_deref()
        .and_then(|code| code.parse::<u32>().ok());
    let message = error.message;
    match status.as_u16() {
        429 => SmsError::RateLimited { retry_after: wait },
        401 | 403 => SmsError::Unauthorized {
            status: status.as_u16(),
            code,
            message,
        },
        // 408: the server gave up reading the request; conservatively ambiguous, like a timeout.
        408 | 500..=599 => {
            let text = format!("HTTP {status} (code {code:?}): {message}");
            match op {
                Operation::Create => SmsError::Ambiguous(text),
                Operation::Read => SmsError::Unavailable(text),
            }
        }
        _ if code == Some(20429) => SmsError::RateLimited { retry_after: wait },
        400..=499 => SmsError::Permanent {
            status: Some(status.as_u16()),
            code,
            message,
        },
        // 1xx/3xx never answer a create: whatever happened is unknown.
        _ => SmsError::Ambiguous(format!("unexpected HTTP {status} from Twilio")),
    }
}

/// Twilio sends some numbers as strings ("2") and some as numbers; accept both, and null.
fn lenient_u32<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u32>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Lenient {
        Number(u32),
        Text(String),
    }
    Ok(match Option::<Lenient>::deserialize(deserializer)? {
        Some(Lenient::Number(n)) => Some(n),
        Some(Lenient::Text(text)) => text.trim().parse().ok(),
        None => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn twilio_error(status: u16, code: u32) -> SmsError {
        let body = format!(r#"{{"code": {code}, "message": "m", "status": {status}}}"#);
        classify(
            StatusCode::from_u16(status).unwrap(),
            None,
            &body,
            Operation::Create,
        )
    }

    #[test]
    fn permanent_codes_are_permanent() {
        for code in [21211, 21408, 21610, 21614, 21617, 21606] {
            let error = twilio_error(400, code);
            assert!(
                matches!(error, SmsError::Permanent { status: Some(400), code: Some(c), .. } if c == code),
                "{code}: {error:?}"
            );
            assert!(!error.is_retriable());
        }
        assert!(matches!(
            twilio_error(404, 20404),
            SmsError::Permanent { .. }
        ));
    }

    #[test]
    fn status_first_then_code() {
        let limited = classify(
            StatusCode::TOO_MANY_REQUESTS,
            Some(Duration::from_secs(3)),
            r#"{"code": 20429, "message": "Too Many Requests"}"#,
            Operation::Create,
        );
        assert_eq!(limited.retry_after(), Some(Duration::from_secs(3)));
        assert_eq!(limited.kind(), "rate_limited");
        // A 429 without a body is still a rate limit; a 20429 under another 4xx status too.
        assert_eq!(
            classify(StatusCode::TOO_MANY_REQUESTS, None, "", Operation::Create).kind(),
            "rate_limited"
        );
        assert_eq!(twilio_error(400, 20429).kind(), "rate_limited");
        // A 5xx is ambiguous whatever code it carries.
        assert_eq!(twilio_error(500, 21211).kind(), "ambiguous");
        assert_eq!(twilio_error(503, 20503).kind(), "ambiguous");
        assert!(twilio_error(502, 0).needs_reconciliation());
        // The same answer to a read is only "unavailable".
        assert_eq!(
            classify(StatusCode::BAD_GATEWAY, None, "", Operation::Read).kind(),
            "unavailable"
        );
    }

    #[test]
    fn credentials_are_their_own_kind() {
        let error = twilio_error(401, 20003);
        assert!(matches!(
            error,
            SmsError::Unauthorized {
                status: 401,
                code: Some(20003),
                ..
            }
        ));
        assert!(error.is_retriable());
        assert_eq!(twilio_error(403, 20008).kind(), "unauthorized");
    }

    #[test]
    fn created_message_parses_with_twilio_shapes() {
        let body = r#"{"sid": "SM0123456789abcdef0123456789abcdef", "status": "queued",
            "to": "+919876543210", "error_code": null, "error_message": null,
            "num_segments": "2", "price": null, "uri": "/2010-04-01/x.json",
            "date_created": "Thu, 30 Jul 2015 20:12:31 +0000"}"#;
        let sent: SentMessage = serde_json::from_str(body).unwrap();
        assert_eq!(sent.num_segments, Some(2));
        assert_eq!(sent.error_code, None);
        let debug = format!("{sent:?}");
        assert!(debug.contains("+91******3210") && !debug.contains("98765"));
    }

    #[test]
    fn construction_checks_the_config_and_hides_the_token() {
        let config = TwilioConfig::new(
            "AC123",
            "token-value-1",
            Originator::From("+15005550006".into()),
        );
        let client = TwilioClient::new(config.clone()).unwrap();
        assert_eq!(
            client.messages_url.as_str(),
            "https://api.twilio.com/2010-04-01/Accounts/AC123/Messages.json"
        );
        assert!(!format!("{client:?}").contains("token-value-1"));
        let bad = TwilioConfig {
            account_sid: "AC/../x".into(),
            ..config.clone()
        };
        assert!(TwilioClient::new(bad).is_err());
        let bad = TwilioConfig {
            base_url: "not a url".into(),
            ..config
        };
        assert!(TwilioClient::new(bad).is_err());
    }
}
