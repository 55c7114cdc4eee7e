//! Outbound notifications for the processors that tell people things: `validate` tells data
//! collectors about flagged responses (SMS and/or a signed webhook) and `receipts` sends each
//! respondent an SMS receipt.
//!
//! - [`twilio`]: a client of Twilio Programmable Messaging's real REST API, whose errors say
//!   what the caller may do next ([`SmsError`], in [`error`]), and a message listing for
//!   reconciliation.
//! - [`outbox`]: the local stand-in for Twilio when no credentials are configured: one fsync'd
//!   JSON line per message, searchable the same way.
//! - [`sender`]: [`SmsSender`], one type over both, built from [`SmsArgs`].
//! - [`once`]: [`OnceSms`], an SMS at most once per key, with the runtime's effect ledger and
//!   reconciliation against the message list; and [`rate`], the per-sender rate limit it awaits.
//! - [`reference`]: the short references SMS carry so that reconciliation can find them.
//! - [`segments`]: GSM-7 / UCS-2 detection, segment counts and the 1600-character limit.
//! - [`webhook`]: Standard Webhooks 1.0 signing, verification and delivery; [`destination`]: the
//!   addresses webhooks may reach (public ones; loopback only for development).
//! - [`redact`]: phone numbers as they may appear in logs (formstream-core's, re-exported).
//!
//! Invariant shared by every module: nothing here retries or re-sends on its own. Each call makes
//! at most one attempt and reports precisely whether the effect happened, may have happened, or
//! did not happen, so that the processor runtime (backoff, circuit breaker, dead letters) and the
//! processor's ledger decide. Secrets never appear in `Debug` output or logs, and phone numbers
//! are logged only through [`redact::phone`].

pub mod destination;
pub mod error;
pub mod once;
pub mod outbox;
pub mod rate;
pub use formstream_core::redact;
pub mod reference;
pub mod segments;
pub mod sender;
pub mod twilio;
pub mod webhook;

pub use destination::Destinations;
pub use error::{ConfigError, SmsError};
pub use once::{Delivery, OnceSms};
pub use outbox::Outbox;
pub use rate::RateLimit;
pub use sender::{SmsArgs, SmsSender};
pub use twilio::{ListFilter, MessageRecord, Originator, SentMessage, TwilioClient, TwilioConfig};
pub use webhook::{Envelope, WebhookError, WebhookSecret, WebhookSender};
