//! [`OnceSms`]: an SMS sent at most once per ledger key, across redeliveries, replays, crashes
//! and instances, for every processor that texts people (receipts, collector notifications).
//!
//! Twilio's create API has no idempotency key, so once-only rests on the processor runtime's
//! effect ledger ([`formstream_runtime::Ledger`], a compacted topic) and on reconciliation:
//! 1. the ledger's entry for the key is read, after syncing with its topic unless it already says
//!    `Done` (what a previous owner of the partition wrote is seen before deciding);
//! 2. `Done`: nothing is sent. `Attempted`: a previous attempt may have created the message (a
//!    crash between Twilio's 201 and the `Done` write, a timeout, a 5xx), so Twilio's message list
//!    is searched by recipient and reference; a message found is recorded `Done`, not re-sent;
//! 3. otherwise the rate limit is awaited, `Attempted` is recorded (acknowledged by Kafka) before
//!    the request, and `Done` with the message sid after it.
//!
//! Invariant: no create request is made for a key without a synced ledger read and an
//! acknowledged `Attempted` entry first, and no second create after an `Attempted` unless the
//! message list (or the outbox) showed nothing to that number carrying the reference. The limit:
//! the reference must be in the body, and the search covers messages created since a day before
//! the attempt (Twilio filters by day).
//!
//! Keys name the whole identity of a response ([`formstream_core::identity`]), so that another
//! organisation reusing a response id never finds this one's entries. Ledgers written before
//! that keyed entries by the response id alone: such a *legacy* key is consulted, read-only, when
//! the key has no entry, so that records redelivered or replayed across the upgrade are not
//! texted twice. Nothing writes legacy keys any more, so no organisation can make one now.

use formstream_runtime::{Entry, Failure, Ledger, LedgerError};

use crate::error::SmsError;
use crate::rate::RateLimit;
use crate::redact;
use crate::segments::segments;
use crate::sender::SmsSender;

/// How far before an attempt reconciliation looks for its message: Twilio filters by UTC day,
/// and a day of margin covers clock skew between instances and an attempt just before midnight.
const RECONCILE_MARGIN: time::Duration = time::Duration::days(1);

/// What [`OnceSms::send`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// The message was created now; its sid.
    Sent(String),
    /// The ledger already said `Done`; the sid (or detail) it holds. Nothing was sent.
    AlreadyDone(String),
    /// An earlier attempt had created it: found in the message list, recorded, not re-sent.
    Reconciled(String),
}

impl Delivery {
    /// The message sid (or the ledger's detail for an old `Done`).
    pub fn sid(&self) -> &str {
        match self {
            Delivery::Sent(sid) | Delivery::AlreadyDone(sid) | Delivery::Reconciled(sid) => sid,
        }
    }
}

/// Sends SMS through `sms`, at most once per ledger key, no faster than the rate limit.
#[derive(Debug, Clone)]
pub struct OnceSms {
    sms: SmsSender,
    ledger: Ledger,
    /// Shared by every clone: the limit is per process (so per sender, one sender per process).
    rate: Option<RateLimit>,
}

impl OnceSms {
    pub fn new(sms: SmsSender, ledger: Ledger) -> Self {
        OnceSms {
            sms,
            ledger,
            rate: None,
        }
    }

    /// Sends no faster than `rate` (awaited inside the effect, so that a full bucket holds the
    /// record in flight and the runtime's in-flight bound turns it into back-pressure).
    pub fn with_rate_limit(mut self, rate: RateLimit) -> Self {
        self.rate = Some(rate);
        self
    }

    pub fn sms(&self) -> &SmsSender {
        &self.sms
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Sends `body` (which must contain `reference`) to `to`, once per `key` (and not if the
    /// `legacy` key of the same effect says it was sent); see the module header. Errors are the
    /// runtime's failures: what Twilio refused for good is permanent, everything else (rate
    /// limits, outages, ambiguous answers, the ledger) is retried. The sender's failures name
    /// their target by the sender's kind ([`SmsSender::kind`]), so that they count against the
    /// circuit of the processor's target of that kind (its
    /// [`formstream_runtime::Processor::targets`]).
    pub async fn send(
        &self,
        key: &str,
        legacy: Option<&str>,
        to: &str,
        reference: &str,
        body: &str,
    ) -> Result<Delivery, Failure> {
        debug_assert!(body.contains(reference), "the body carries the reference");
        match settled(&self.ledger, key, legacy).await? {
            Some(Entry::Done { detail, .. }) => return Ok(Delivery::AlreadyDone(detail)),
            Some(Entry::Attempted {
                at,
                reference: attempted,
            }) => {
                let since = (at - RECONCILE_MARGIN).date();
                let found = self
                    .sms
                    .find_sent(to, &attempted, since)
                    .await
                    .map_err(|error| sms_failure(error).at(self.sms.kind()))?;
                if let Some(found) = found {
                    tracing::info!(%key, to = %redact::phone(to), sid = %found.sid, "An earlier attempt had sent the SMS; recorded, not re-sent.");
                    record(&self.ledger, key, Entry::done(found.sid.clone())).await?;
                    return Ok(Delivery::Reconciled(found.sid));
                }
                tracing::info!(%key, to = %redact::phone(to), "An earlier attempt sent nothing; sending.");
            }
            None => {}
        }
        if let Some(rate) = &self.rate {
            rate.until_ready(segments(body).count).await;
        }
        record(&self.ledger, key, Entry::attempted(reference)).await?;
        let sent = self.sms.send(to, body).await.map_err(|error| {
            tracing::warn!(%key, to = %redact::phone(to), kind = error.kind(), code = ?error.code(), "SMS not sent.");
            // The sender's failures are its target's (the ledger's are the processor's own).
            sms_failure(error).at(self.sms.kind())
        })?;
        tracing::debug!(%key, to = %redact::phone(to), sid = %sent.sid, via = self.sms.kind(), "SMS sent.");
        record(&self.ledger, key, Entry::done(sent.sid.clone())).await?;
        Ok(Delivery::Sent(sent.sid))
    }

    /// While the circuit is open: Twilio answers an authenticated read (the outbox always can).
    pub async fn probe(&self) -> anyhow::Result<()> {
        self.sms.probe().await.map_err(anyhow::Error::new)
    }
}

/// The ledger's entry for `key`, read after syncing with the topic unless it already says
/// `Done`: what a previous owner of the partition wrote is seen before acting on a miss. When
/// `key` has none, the entry of its `legacy` key (see the module header) as the view holds it,
/// without syncing its partition: legacy entries are written only by instances of an older
/// version, so once those have stopped, the view loaded at start-up holds them all.
pub async fn settled(
    ledger: &Ledger,
    key: &str,
    legacy: Option<&str>,
) -> Result<Option<Entry>, Failure> {
    let held = |ledger: &Ledger| {
        ledger
            .get(key)
            .or_else(|| legacy.and_then(|l| ledger.get(l)))
    };
    if let Some(entry @ Entry::Done { .. }) = held(ledger) {
        return Ok(Some(entry));
    }
    ledger.sync_key(key).await.map_err(ledger_failure)?;
    Ok(held(ledger))
}

/// Records `entry` for `key`, acknowledged by Kafka.
pub async fn record(ledger: &Ledger, key: &str, entry: Entry) -> Result<(), Failure> {
    ledger.record(key, entry).await.map_err(ledger_failure)
}

/// Twilio's outcomes as the runtime's: see [`SmsError`]'s module for the reasoning.
pub fn sms_failure(error: SmsError) -> Failure {
    match error {
        SmsError::RateLimited {
            retry_after: Some(after),
        } => Failure::retry_after(
            SmsError::RateLimited {
                retry_after: Some(after),
            },
            after,
        ),
        // Ambiguous ones are reconciled on the retry, thanks to the Attempted entry.
        SmsError::RateLimited { retry_after: None }
        | SmsError::Unavailable(_)
        | SmsError::Ambiguous(_) => Failure::retriable(error),
        // Bad credentials fail every record: retriable, so that the circuit opens and nothing is
        // dead-lettered while an operator fixes the secret.
        SmsError::Unauthorized { .. } => Failure::retriable(error),
        SmsError::Permanent { .. } => Failure::permanent(error),
    }
}

/// The ledger is Kafka: when it cannot answer, the broker is in trouble and the record is retried.
pub fn ledger_failure(error: LedgerError) -> Failure {
    Failure::retriable(anyhow::Error::new(error).context("the effect ledger"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn sms_errors_map_to_what_happens_next() {
        let after = Duration::from_secs(7);
        let failure = sms_failure(SmsError::RateLimited {
            retry_after: Some(after),
        });
        assert!(matches!(failure, Failure::Retriable { retry_after: Some(a), .. } if a == after));
        for error in [
            SmsError::RateLimited { retry_after: None },
            SmsError::Unavailable("down".into()),
            SmsError::Ambiguous("timeout".into()),
            SmsError::Unauthorized {
                status: 401,
                code: Some(20003),
                message: "no".into(),
            },
        ] {
            assert!(sms_failure(error).is_retriable());
        }
        for code in [21211, 21408, 21610, 21614, 21617] {
            let permanent = sms_failure(SmsError::Permanent {
                status: Some(400),
                code: Some(code),
                message: "refused".into(),
            });
            assert!(!permanent.is_retriable());
            assert!(
                format!("{:#}", permanent.error()).contains(&code.to_string()),
                "the dead letter names the Twilio code"
            );
        }
    }
}
