//! The flags of `formstream process notify-collectors`, and the webhook secrets file.
//!
//! Invariant: a secrets file that cannot be read or holds an invalid secret stops the processor at
//! start-up (never a webhook sent unsigned or with a half-read secret), and no secret ever reaches
//! a log line or an error message: errors name the organisation, never the value.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use formstream_core::config::parse_duration;
use formstream_notify::{Destinations, SmsArgs, WebhookSecret};
use formstream_runtime::LedgerArgs;
use serde::Deserialize;

/// `formstream process notify-collectors`: where SMS and webhooks go, and how collectors are told
/// to correct a response.
#[derive(Debug, Clone, Args)]
pub struct NotifyCollectorsArgs {
    #[command(flatten)]
    pub sms: SmsArgs,

    #[command(flatten)]
    pub ledger: LedgerArgs,

    /// The gateway's public base URL, as collectors reach it: the correction endpoint in every
    /// message is `<this>/v1/forms/{form_id}/responses/{response_id}`.
    // The gateway's default listen address, so that a local run gives a URL that works locally.
    #[arg(
        long,
        env = "FORMSTREAM_CORRECTION_BASE_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub correction_base_url: String,

    /// TOML file of webhook signing secrets per organisation: `acme = "whsec_..."`, or a list
    /// (`acme = ["whsec_new", "whsec_old"]`) to sign with both during a rotation. A flagged
    /// response of a form with a `webhook_url` whose organisation has no secret is dead-lettered:
    /// webhooks are never sent unsigned.
    #[arg(long, env = "FORMSTREAM_WEBHOOK_SECRETS")]
    pub webhook_secrets: Option<PathBuf>,

    /// Longest wait for a webhook receiver's answer; a timeout is retried with the same
    /// webhook-id.
    // Standard Webhooks senders commonly allow about 15 s; receivers are told to answer fast.
    #[arg(long, env = "FORMSTREAM_WEBHOOK_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    pub webhook_timeout: Duration,

    /// Also deliver webhooks to this machine's loopback addresses (127.0.0.0/8, ::1), for local
    /// development and tests. Private, link-local and other non-public addresses are refused
    /// whatever this says: a form's webhook_url must not reach into the processor's network.
    // Off: in production a webhook to loopback reaches the processor's own host.
    #[arg(long, env = "FORMSTREAM_WEBHOOK_ALLOW_LOOPBACK")]
    pub webhook_allow_loopback: bool,
}

impl NotifyCollectorsArgs {
    /// Which addresses webhooks may reach, as the flags say.
    pub fn webhook_destinations(&self) -> Destinations {
        if self.webhook_allow_loopback {
            Destinations::PublicAndLoopback
        } else {
            Destinations::Public
        }
    }
}

/// Signing secrets by organisation. `Debug` shows organisations only.
#[derive(Clone, Default)]
pub struct WebhookSecrets {
    by_organisation: HashMap<String, Vec<WebhookSecret>>,
    /// Where they came from, for error messages ("not set" when no file was given).
    source: String,
}

impl std::fmt::Debug for WebhookSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut organisations: Vec<&String> = self.by_organisation.keys().collect();
        organisations.sort();
        f.debug_struct("WebhookSecrets")
            .field("organisations", &organisations)
            .field("source", &self.source)
            .finish()
    }
}

/// One organisation's entry: a secret, or several during a rotation.
#[derive(Deserialize)]
#[serde(untagged)]
enum SecretsEntry {
    One(String),
    Several(Vec<String>),
}

impl WebhookSecrets {
    /// No secrets: every webhook is dead-lettered with a message saying so.
    pub fn none() -> Self {
        WebhookSecrets {
            by_organisation: HashMap::new(),
            source: "--webhook-secrets is not set".to_owned(),
        }
    }

    /// Reads `path` (see [`NotifyCollectorsArgs::webhook_secrets`]).
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            anyhow::anyhow!("reading the webhook secrets file {}: {e}", path.display())
        })?;
        Self::parse(
            &text,
            &format!("the webhook secrets file {}", path.display()),
        )
    }

    /// Parses the TOML text of a secrets file; `source` names it in errors.
    pub fn parse(text: &str, source: &str) -> anyhow::Result<Self> {
        // toml's errors quote the offending line, which may hold a secret: say where, not what.
        let table: HashMap<String, SecretsEntry> = toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .map(|span| format!(" near byte {}", span.start))
                .unwrap_or_default();
            anyhow::anyhow!(
                "{source} is not a table of organisation = \"whsec_...\" (or a list of them){at}"
            )
        })?;
        let mut by_organisation = HashMap::new();
        for (organisation, entry) in table {
            let texts = match entry {
                SecretsEntry::One(text) => vec![text],
                SecretsEntry::Several(texts) => texts,
            };
            if texts.is_empty() {
                anyhow::bail!(
                    "{source}: organisation {organisation:?} has an empty list of secrets"
                );
            }
            let secrets = texts
                .iter()
                .map(|text| WebhookSecret::parse(text.trim()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| anyhow::anyhow!("{source}: the secret of {organisation:?}: {e}"))?;
            by_organisation.insert(organisation, secrets);
        }
        Ok(WebhookSecrets {
            by_organisation,
            source: source.to_owned(),
        })
    }

    /// The secrets of `organisation`, newest first as written.
    pub fn get(&self, organisation: &str) -> Option<&[WebhookSecret]> {
        self.by_organisation.get(organisation).map(Vec::as_slice)
    }

    /// Where the secrets came from, for error messages.
    pub fn source(&self) -> &str {
        &self.source
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const B: &str = "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYX";

    #[test]
    fn one_secret_or_several_per_organisation() {
        let secrets = WebhookSecrets::parse(
            &format!("acme = \"{A}\"\nglobex = [\"{B}\", \"{A}\"]\n"),
            "t",
        )
        .unwrap();
        assert_eq!(secrets.get("acme").unwrap().len(), 1);
        assert_eq!(secrets.get("globex").unwrap().len(), 2);
        assert!(secrets.get("initech").is_none());
        let shown = format!("{secrets:?}");
        assert!(shown.contains("acme") && !shown.contains("MfKQ") && !shown.contains("AAEC"));
    }

    #[test]
    fn bad_files_fail_without_showing_secrets() {
        for text in [
            "acme = \"MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"".to_owned(),
            "acme = \"whsec_c2hvcnQ=\"".to_owned(),
            "acme = []".to_owned(),
            format!("acme = {{ secret = \"{A}\" }}"),
            format!("acme \"{A}\""),
        ] {
            let error = format!(
                "{:#}",
                WebhookSecrets::parse(&text, "the file").unwrap_err()
            );
            assert!(error.contains("the file"), "{error}");
            assert!(
                !error.contains("MfKQ9r8") && !error.contains("c2hvcnQ"),
                "{error}"
            );
        }
    }

    #[test]
    fn webhooks_reach_loopback_only_with_the_development_flag() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            args: NotifyCollectorsArgs,
        }
        let parse = |extra: &[&str]| {
            let argv = std::iter::once("notify-collectors").chain(extra.iter().copied());
            Cli::try_parse_from(argv).expect("flags parse").args
        };
        assert_eq!(parse(&[]).webhook_destinations(), Destinations::Public);
        assert_eq!(
            parse(&["--webhook-allow-loopback"]).webhook_destinations(),
            Destinations::PublicAndLoopback
        );
    }

    #[test]
    fn no_file_means_no_secrets_and_says_so() {
        let secrets = WebhookSecrets::none();
        assert!(secrets.get("acme").is_none());
        assert!(secrets.source().contains("--webhook-secrets"));
    }
}
