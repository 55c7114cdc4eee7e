//! [`Receipts`]: for each response of a form with a receipt action, one SMS to the number answered
//! on the action's phone question.
//!
//! Invariant: a receipt is sent only through [`OnceSms`] under the response's identity
//! (organisation, form id, response id), so a later revision, a redelivery or a replay of the same
//! response never texts again, and another organisation's response with the same id is another
//! receipt (see the crate header). What can never succeed is permanent and dead-lettered with its reason: a number that
//! cannot exist (checked with libphonenumber before any request), Twilio's refusals (21211,
//! 21408, 21610, 21614, 21617 and other 4xx, with their code), a template that cannot render the
//! response. Phone numbers appear in logs only redacted.
//!
//! Target: the SMS sender's account, with the response's organisation, so that what one
//! organisation's receipts do to the account's circuit never holds back another's.

use std::future::Future;

use anyhow::anyhow;
use formstream_core::identity::ResponseKey;
use formstream_core::phones::normalise_phone;
use formstream_notify::{Delivery, OnceSms, RateLimit, SmsSender, redact};
use formstream_runtime::{
    Failure, Ledger, Processor, Record, RuntimeConfig, Target, TargetRef, Targets,
};
use formstream_schemas::Response;

use crate::config::ReceiptsArgs;
use crate::receipt;

/// The processor's name: group `formstream-receipts`, dead letters on `receipts.dlq`, ledger on
/// `receipts.ledger`.
pub const NAME: &str = "receipts";

/// The processor; see the module header.
#[derive(Debug)]
pub struct Receipts {
    sms: OnceSms,
}

impl Receipts {
    /// Checks the configuration (Twilio or the outbox, the rate), then opens the ledger and waits
    /// until it has caught up with its topic. `Ok(None)` when `shutdown` completes first.
    pub async fn open(
        args: ReceiptsArgs,
        runtime: &RuntimeConfig,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<Option<Self>> {
        let sms = SmsSender::from_args(&args.sms)?;
        let rate = RateLimit::per_second(args.receipts_rate).ok_or_else(|| {
            anyhow!(
                "--receipts-rate must be a positive number of segments per second, not {}",
                args.receipts_rate
            )
        })?;
        let Some(ledger) = Ledger::open(&runtime.kafka, &args.ledger, NAME, shutdown).await? else {
            return Ok(None);
        };
        tracing::info!(via = sms.kind(), rate = rate.rate(), ledger = %ledger.topic(), "Receipts ready to send.");
        Ok(Some(Self::new(sms, ledger, rate)))
    }

    /// A processor from its parts (tests and the benchmark build them directly).
    pub fn new(sms: SmsSender, ledger: Ledger, rate: RateLimit) -> Self {
        Receipts {
            sms: OnceSms::new(sms, ledger).with_rate_limit(rate),
        }
    }
}

impl Processor for Receipts {
    type Value = Response;

    fn name(&self) -> &str {
        NAME
    }

    async fn handle(&self, record: &Record<Response>) -> Result<(), Failure> {
        let response = &record.value;
        let response_id = response.response_id.as_str();
        // The runtime holds a record back until its form is known; a missing version cannot
        // appear later (versions are never removed).
        let form = record.form_version().ok_or_else(|| {
            Failure::permanent(anyhow!(
                "form {} has no version {}",
                response.form_id,
                response.form_version
            ))
        })?;
        let Some(action) = &form.receipt else {
            return Ok(());
        };
        let raw = response
            .answers
            .iter()
            .find(|a| a.question_key == action.phone_question)
            .and_then(|a| a.text.as_deref())
            .filter(|text| !text.trim().is_empty());
        let Some(raw) = raw else {
            // An optional phone question left empty: nobody to text, and nothing to retry.
            tracing::info!(
                response_id,
                revision = response.revision,
                question = %action.phone_question,
                "No phone number answered; no receipt."
            );
            return Ok(());
        };
        let region = form
            .default_region
            .as_deref()
            .and_then(|r| r.parse::<phonenumber::country::Id>().ok());
        let to = normalise_phone(raw, region).ok_or_else(|| {
            Failure::permanent(anyhow!(
                "the answer to {:?} ({}) is not a phone number that can exist (default region {}); no receipt sent",
                action.phone_question,
                redact::phone(raw),
                form.default_region.as_deref().unwrap_or("none"),
            ))
        })?;
        let key = ResponseKey::of(response).to_string();
        let reference = receipt::reference(&key);
        let text = receipt::text(action, &response.form_id, form, response, &reference)
            .map_err(|e| Failure::permanent(anyhow!(e)))?;
        // Before keys named the organisation and the form, the response id alone was the key.
        let legacy = Some(response_id);
        let delivery = self.sms.send(&key, legacy, &to, &reference, &text).await?;
        let sid = delivery.sid();
        match delivery {
            Delivery::Sent(_) => {
                tracing::info!(response_id, revision = response.revision, to = %redact::phone(&to), %sid, %reference, "Receipt sent.");
            }
            Delivery::AlreadyDone(_) => {
                tracing::debug!(response_id, revision = response.revision, %sid, "Receipt already sent for this response; skipped.");
            }
            Delivery::Reconciled(_) => {
                tracing::info!(response_id, revision = response.revision, to = %redact::phone(&to), %sid, %reference, "An earlier attempt had sent the receipt; recorded, not re-sent.");
            }
        }
        Ok(())
    }

    /// While the circuit is open: Twilio answers an authenticated read (the outbox always can).
    async fn probe(&self) -> anyhow::Result<()> {
        self.sms.probe().await
    }

    /// The SMS sender's account, for a response of a form with a receipt action.
    fn targets<'a>(&'a self, record: &'a Record<Response>) -> Targets<'a> {
        let Some(owner) = record.form.as_deref() else {
            return Targets::none();
        };
        if record
            .form_version()
            .is_none_or(|form| form.receipt.is_none())
        {
            return Targets::none();
        }
        let sms = self.sms.sms();
        Targets::one(TargetRef {
            // The form's organisation: the one that set up its receipts.
            organisation: &owner.organisation,
            kind: sms.kind(),
            address: sms.account(),
        })
    }

    /// Twilio answers an authenticated read (the outbox always can).
    async fn probe_target(&self, _target: &Target) -> anyhow::Result<()> {
        self.sms.probe().await
    }

    fn target_name(&self, target: &Target) -> String {
        format!("{} account {}", target.kind(), target.address())
    }
}
