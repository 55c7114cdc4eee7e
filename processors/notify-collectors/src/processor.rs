//! [`NotifyCollectors`]: for each flagged (response, revision), one SMS to the collector and/or
//! one signed webhook, as the form version's `notify` settings say; nothing for clean ones.
//!
//! Invariant: no effect is started without first consulting the ledger, synced with its topic:
//! `Done` is skipped; `Attempted` means a previous attempt may have had its effect, so an SMS is
//! reconciled against Twilio's message list before any re-send and a webhook is re-delivered
//! with the same `webhook-id`. `Attempted` is recorded (acknowledged by Kafka) before each effect
//! and `Done` after it. Ledger keys name the flagged response's whole identity (organisation,
//! form id, response id), so another organisation reusing a response id never stops these
//! notifications. Phone numbers appear in logs only redacted.
//!
//! Targets: a flagged record's effect writes to the SMS sender's account and/or the form's
//! webhook receiver, each with the flag's organisation; each has a circuit of its own, so that
//! one organisation's receiver that is down holds back only that organisation's notifications.

use std::future::Future;

use anyhow::anyhow;
use formstream_notify::once;
use formstream_notify::{
    Delivery, Envelope, OnceSms, SmsSender, WebhookError, WebhookSender, redact,
};
use formstream_runtime::{
    Entry, Failure, Ledger, Processor, Record, RuntimeConfig, Source, Target, TargetRef, Targets,
};
use formstream_schemas::{FlagStatus, FormVersion, ResponseFlag};

use crate::config::{NotifyCollectorsArgs, WebhookSecrets};
use crate::message;

/// The processor's name: group `formstream-notify-collectors`, dead letters on
/// `notify-collectors.dlq`, ledger on `notify-collectors.ledger`.
pub const NAME: &str = "notify-collectors";

/// The kind of target a webhook goes to: the form's receiver (an SMS goes to the sender's, see
/// [`formstream_notify::SmsSender::kind`]).
pub const WEBHOOK: &str = "webhook";

/// The processor; see the module header.
pub struct NotifyCollectors {
    /// SMS through the ledger; its ledger also guards the webhooks.
    sms: OnceSms,
    webhooks: WebhookSender,
    secrets: WebhookSecrets,
    correction_base_url: String,
}

impl std::fmt::Debug for NotifyCollectors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotifyCollectors")
            .field("sms", &self.sms.sms().kind())
            .field("secrets", &self.secrets)
            .field("ledger", self.sms.ledger())
            .finish_non_exhaustive()
    }
}

impl NotifyCollectors {
    /// Checks the configuration (Twilio, the secrets file), then opens the ledger and waits until
    /// it has caught up with its topic. `Ok(None)` when `shutdown` completes first.
    pub async fn open(
        args: NotifyCollectorsArgs,
        runtime: &RuntimeConfig,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<Option<Self>> {
        let sms = SmsSender::from_args(&args.sms)?;
        let secrets = match &args.webhook_secrets {
            Some(path) => WebhookSecrets::load(path)?,
            None => {
                tracing::warn!(
                    "No --webhook-secrets: flagged responses of forms with a webhook_url will be dead-lettered."
                );
                WebhookSecrets::none()
            }
        };
        let webhooks = WebhookSender::new(args.webhook_timeout, args.webhook_destinations())?;
        let Some(ledger) = Ledger::open(&runtime.kafka, &args.ledger, NAME, shutdown).await? else {
            return Ok(None);
        };
        Ok(Some(Self::new(
            sms,
            webhooks,
            secrets,
            ledger,
            args.correction_base_url,
        )))
    }

    /// A processor from its parts (tests build them directly).
    pub fn new(
        sms: SmsSender,
        webhooks: WebhookSender,
        secrets: WebhookSecrets,
        ledger: Ledger,
        correction_base_url: String,
    ) -> Self {
        NotifyCollectors {
            sms: OnceSms::new(sms, ledger),
            webhooks,
            secrets,
            correction_base_url,
        }
    }

    async fn settled(&self, key: &str, legacy: &str) -> Result<Option<Entry>, Failure> {
        once::settled(self.sms.ledger(), key, Some(legacy)).await
    }

    async fn record(&self, key: &str, entry: Entry) -> Result<(), Failure> {
        once::record(self.sms.ledger(), key, entry).await
    }

    /// The SMS to the collector, at most once per (response, revision).
    async fn notify_by_sms(&self, flag: &ResponseFlag, form: &FormVersion) -> Result<(), Failure> {
        let response_id = flag.response_id.as_str();
        let Some(to) = flag.collector_phone.as_deref() else {
            tracing::warn!(
                response_id,
                revision = flag.revision,
                collector_id = %flag.collector_id,
                "The form asks to text the collector, but the flag has no collector phone; no SMS."
            );
            return Ok(());
        };
        let key = message::ledger_key(flag, "sms");
        let legacy = message::legacy_ledger_key(flag, "sms");
        let reference = message::reference(flag);
        let url = message::correction_url(&self.correction_base_url, flag);
        let body = message::sms_body(flag, &form.title, &url);
        let delivery = self
            .sms
            .send(&key, Some(&legacy), to, &reference, &body)
            .await?;
        let sid = delivery.sid();
        match delivery {
            Delivery::Sent(_) => {
                tracing::info!(response_id, revision = flag.revision, to = %redact::phone(to), %sid, via = self.sms.sms().kind(), "Collector texted.");
            }
            Delivery::AlreadyDone(_) => {
                tracing::info!(response_id, revision = flag.revision, %sid, "Collector already texted; skipped.");
            }
            Delivery::Reconciled(_) => {
                tracing::info!(response_id, revision = flag.revision, to = %redact::phone(to), %sid, "An earlier attempt had texted the collector; recorded, not re-sent.");
            }
        }
        Ok(())
    }

    /// The signed webhook, delivered until the receiver answers 2xx, always with the same
    /// `webhook-id`.
    async fn notify_by_webhook(
        &self,
        flag: &ResponseFlag,
        form: &FormVersion,
        url: &str,
    ) -> Result<(), Failure> {
        let response_id = flag.response_id.as_str();
        let key = message::ledger_key(flag, "webhook");
        let legacy = message::legacy_ledger_key(flag, "webhook");
        let id = message::webhook_id(flag);
        let attempted = match self.settled(&key, &legacy).await? {
            Some(Entry::Done { .. }) => {
                tracing::info!(response_id, revision = flag.revision, webhook_id = %id, "Webhook already delivered; skipped.");
                return Ok(());
            }
            Some(Entry::Attempted { .. }) => true,
            None => false,
        };
        let Some(secrets) = self.secrets.get(&flag.organisation) else {
            return Err(Failure::permanent(anyhow!(
                "form {} (organisation {:?}) has a webhook_url, but no webhook signing secret is configured for that organisation ({}); webhooks are never sent unsigned. Add `{} = \"whsec_...\"` to the --webhook-secrets file and replay this dead letter.",
                flag.form_id,
                flag.organisation,
                self.secrets.source(),
                flag.organisation
            )));
        };
        if attempted {
            // Standard Webhooks: the same webhook-id on every retry; the receiver deduplicates.
            tracing::info!(response_id, revision = flag.revision, webhook_id = %id, "An earlier delivery may have arrived; re-delivering with the same webhook-id.");
        } else {
            self.record(&key, Entry::attempted(id.clone())).await?;
        }
        let correction = message::correction_url(&self.correction_base_url, flag);
        let envelope = Envelope::new(
            message::FLAGGED_EVENT,
            message::evaluated_at(flag),
            message::flagged_event(flag, &form.title, &correction),
        );
        let delivered = self
            .webhooks
            .deliver(url, secrets, &id, &envelope)
            .await
            .map_err(|error| {
                tracing::warn!(response_id, revision = flag.revision, webhook_id = %id, kind = error.kind(), "Webhook not delivered.");
                webhook_failure(error).at(WEBHOOK)
            })?;
        tracing::info!(response_id, revision = flag.revision, webhook_id = %id, status = delivered.status, "Webhook delivered.");
        self.record(&key, Entry::done(format!("HTTP {}", delivered.status)))
            .await
    }
}

impl Processor for NotifyCollectors {
    type Value = ResponseFlag;

    fn name(&self) -> &str {
        NAME
    }

    fn source(&self) -> Source {
        Source::Flags
    }

    async fn handle(&self, record: &Record<ResponseFlag>) -> Result<(), Failure> {
        let flag = &record.value;
        if flag.status == FlagStatus::Clean {
            return Ok(());
        }
        // The runtime holds a record back until its form is known; a missing version cannot
        // appear later (versions are never removed).
        let form = record.form_version().ok_or_else(|| {
            Failure::permanent(anyhow!(
                "form {} has no version {}",
                flag.form_id,
                flag.form_version
            ))
        })?;
        // SMS first: a webhook problem (say, a missing secret) must not keep the collector's SMS
        // from going out; the ledger makes the retry or the replay of the record skip it.
        if form.notify.sms_collector {
            self.notify_by_sms(flag, form).await?;
        }
        if let Some(url) = &form.notify.webhook_url {
            self.notify_by_webhook(flag, form, url).await?;
        }
        Ok(())
    }

    /// While the circuit is open: Twilio answers an authenticated read (the outbox always can).
    async fn probe(&self) -> anyhow::Result<()> {
        self.sms.probe().await
    }

    /// A flagged record's SMS sender account and webhook receiver, as its form version asks.
    fn targets<'a>(&'a self, record: &'a Record<ResponseFlag>) -> Targets<'a> {
        let flag = &record.value;
        let mut targets = Targets::none();
        if flag.status == FlagStatus::Clean {
            return targets;
        }
        let (Some(owner), Some(form)) = (record.form.as_deref(), record.form_version()) else {
            return targets;
        };
        // The form's organisation: the one that set up its notifications.
        let organisation = owner.organisation.as_str();
        if form.notify.sms_collector && flag.collector_phone.is_some() {
            let sms = self.sms.sms();
            targets = targets.and(TargetRef {
                organisation,
                kind: sms.kind(),
                address: sms.account(),
            });
        }
        if let Some(url) = &form.notify.webhook_url {
            targets = targets.and(TargetRef {
                organisation,
                kind: WEBHOOK,
                address: url,
            });
        }
        targets
    }

    /// The SMS account answers an authenticated read. A webhook receiver has no read to ask:
    /// its probe is its first waiting notification, re-delivered with the same `webhook-id`.
    async fn probe_target(&self, target: &Target) -> anyhow::Result<()> {
        if target.kind() == WEBHOOK {
            return Ok(());
        }
        self.sms.probe().await
    }

    /// A receiver by its URL's origin (its path or query may hold a token); an SMS account by
    /// its id.
    fn target_name(&self, target: &Target) -> String {
        if target.kind() == WEBHOOK {
            return format!("webhook receiver {}", origin(target.address()));
        }
        format!("{} account {}", target.kind(), target.address())
    }
}

/// `scheme://host[:port]` of a URL, without user information, path or query; `?` when it is not
/// a URL.
fn origin(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(url) => url.origin().ascii_serialization(),
        Err(_) => "?".to_owned(),
    }
}

fn webhook_failure(error: WebhookError) -> Failure {
    match error.retry_after() {
        Some(after) if error.is_retriable() => Failure::retry_after(error, after),
        _ if error.is_retriable() => Failure::retriable(error),
        _ => Failure::permanent(error),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn webhook_errors_map_to_what_happens_next() {
        let after = Duration::from_secs(3);
        let failure = webhook_failure(WebhookError::Retriable {
            status: Some(429),
            retry_after: Some(after),
            reason: "busy".into(),
        });
        assert!(matches!(failure, Failure::Retriable { retry_after: Some(a), .. } if a == after));
        assert!(
            webhook_failure(WebhookError::Retriable {
                status: None,
                retry_after: None,
                reason: "timed out".into()
            })
            .is_retriable()
        );
        assert!(
            !webhook_failure(WebhookError::Rejected {
                status: 410,
                reason: "gone".into()
            })
            .is_retriable()
        );
        assert!(!webhook_failure(WebhookError::Invalid("bad url".into())).is_retriable());
    }

    #[test]
    fn a_receiver_is_named_by_its_origin_only() {
        assert_eq!(
            origin("https://user:pw@hooks.example:8443/in/T0KEN?sig=abc"),
            "https://hooks.example:8443"
        );
        assert_eq!(origin("not a url"), "?");
    }
}
