//! [`SmsSender`]: Twilio when credentials are configured, the outbox file otherwise, behind one
//! type, so that processors are written once and run locally without an account.
//!
//! Invariant: a half-configured Twilio (an account SID without a token, or no sender) is a
//! startup error, never a silent fall-back to the outbox: messages meant for real phones must not
//! quietly land in a file.

use std::path::PathBuf;
use std::time::Duration;

use formstream_core::config::parse_duration;
use formstream_schemas::Secret;
use time::Date;

use crate::error::{ConfigError, SmsError};
use crate::outbox::Outbox;
use crate::twilio::{
    DEFAULT_BASE_URL, MessageRecord, Originator, SentMessage, TwilioClient, TwilioConfig,
};

/// SMS flags, shared by every processor that sends SMS (flatten them into its own `Args`).
#[derive(Debug, Clone, clap::Args)]
pub struct SmsArgs {
    /// Twilio account SID (AC...). With an auth token, SMS go to Twilio; with neither, to
    /// --sms-outbox.
    #[arg(long, env = "FORMSTREAM_TWILIO_ACCOUNT_SID")]
    pub twilio_account_sid: Option<String>,

    /// Twilio auth token. Prefer the environment variable or --twilio-auth-token-file to the
    /// flag, which other users of the machine can read in the process list.
    #[arg(long, env = "FORMSTREAM_TWILIO_AUTH_TOKEN", hide_env_values = true)]
    pub twilio_auth_token: Option<Secret>,

    /// A file holding the Twilio auth token (e.g. a mounted Kubernetes secret); surrounding
    /// whitespace is ignored.
    #[arg(
        long,
        env = "FORMSTREAM_TWILIO_AUTH_TOKEN_FILE",
        conflicts_with = "twilio_auth_token"
    )]
    pub twilio_auth_token_file: Option<PathBuf>,

    /// The sending number (E.164), short code or alphanumeric sender id.
    #[arg(
        long,
        env = "FORMSTREAM_TWILIO_FROM",
        conflicts_with = "twilio_messaging_service_sid"
    )]
    pub twilio_from: Option<String>,

    /// A Messaging Service (MG...) to send through instead of --twilio-from.
    #[arg(long, env = "FORMSTREAM_TWILIO_MESSAGING_SERVICE_SID")]
    pub twilio_messaging_service_sid: Option<String>,

    /// Twilio's API; point it at a fake or a proxy for tests.
    #[arg(long, env = "FORMSTREAM_TWILIO_BASE_URL", default_value = DEFAULT_BASE_URL)]
    pub twilio_base_url: String,

    /// Timeout of one Twilio request. 10 s: far above Twilio's usual answer time, because a
    /// timed-out send is ambiguous and costs a reconciliation.
    #[arg(long, env = "FORMSTREAM_TWILIO_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub twilio_timeout: Duration,

    /// URL Twilio posts later message statuses to (sent, delivered, failed...), if any.
    #[arg(long, env = "FORMSTREAM_TWILIO_STATUS_CALLBACK")]
    pub twilio_status_callback: Option<String>,

    /// The outbox file SMS are appended to when Twilio is not configured. Under `data/`, beside
    /// the other local stand-ins, so that a local run leaves everything in one place.
    #[arg(
        long,
        env = "FORMSTREAM_SMS_OUTBOX",
        default_value = "data/sms-outbox.jsonl"
    )]
    pub sms_outbox: PathBuf,
}

/// Where SMS go. Cheap to clone.
#[derive(Debug, Clone)]
pub enum SmsSender {
    Twilio(TwilioClient),
    Outbox(Outbox),
}

impl SmsSender {
    /// Twilio if an account SID and a token are given, the outbox if neither is; an error for
    /// anything in between.
    pub fn from_args(args: &SmsArgs) -> Result<Self, ConfigError> {
        let token = match (&args.twilio_auth_token, &args.twilio_auth_token_file) {
            (Some(token), _) => Some(token.clone()),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
                    what: format!("reading the Twilio auth token file {}", path.display()),
                    source,
                })?;
                Some(Secret::new(text.trim()))
            }
            (None, None) => None,
        };
        let (account_sid, token) = match (&args.twilio_account_sid, token) {
            (None, None) => {
                tracing::info!(outbox = %args.sms_outbox.display(), "No Twilio credentials: SMS go to the outbox file.");
                return Ok(SmsSender::Outbox(Outbox::open(&args.sms_outbox)?));
            }
            (Some(sid), Some(token)) if !token.expose().is_empty() => (sid.clone(), token),
            (Some(_), _) => {
                return Err(ConfigError::Invalid(
                    "a Twilio account SID is set but no auth token: set FORMSTREAM_TWILIO_AUTH_TOKEN or --twilio-auth-token-file".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::Invalid(
                    "a Twilio auth token is set but no account SID: set FORMSTREAM_TWILIO_ACCOUNT_SID".into(),
                ));
            }
        };
        let originator = match (&args.twilio_from, &args.twilio_messaging_service_sid) {
            (Some(from), None) => Originator::From(from.clone()),
            (None, Some(service)) => Originator::MessagingService(service.clone()),
            _ => {
                return Err(ConfigError::Invalid(
                    "Twilio needs exactly one of --twilio-from and --twilio-messaging-service-sid"
                        .into(),
                ));
            }
        };
        let mut config = TwilioConfig::new(account_sid, token, originator);
        config.base_url = args.twilio_base_url.clone();
        config.timeout = args.twilio_timeout;
        config.status_callback = args.twilio_status_callback.clone();
        tracing::info!(account_sid = %config.account_sid, base_url = %config.base_url, "SMS go to Twilio.");
        Ok(SmsSender::Twilio(TwilioClient::new(config)?))
    }

    /// Sends one message; see [`SmsError`] for what each failure allows.
    pub async fn send(&self, to: &str, body: &str) -> Result<SentMessage, SmsError> {
        match self {
            SmsSender::Twilio(client) => client.send(to, body).await,
            SmsSender::Outbox(outbox) => outbox.send(to, body).await,
        }
    }

    /// Reconciliation: the message to `to` since `since` whose body contains `reference`.
    pub async fn find_sent(
        &self,
        to: &str,
        reference: &str,
        since: Date,
    ) -> Result<Option<MessageRecord>, SmsError> {
        match self {
            SmsSender::Twilio(client) => client.find_sent(to, reference, since).await,
            SmsSender::Outbox(outbox) => outbox.find_sent(to, reference, since),
        }
    }

    /// Whether sending can work now (a circuit breaker's probe): one read from Twilio; the
    /// outbox is a local file, always there.
    pub async fn probe(&self) -> Result<(), SmsError> {
        match self {
            SmsSender::Twilio(client) => client.probe().await,
            SmsSender::Outbox(_) => Ok(()),
        }
    }

    /// The account messages are sent from: the Twilio account SID, or `outbox`. An identifier,
    /// not a secret: it is logged at start.
    pub fn account(&self) -> &str {
        match self {
            SmsSender::Twilio(client) => &client.config().account_sid,
            SmsSender::Outbox(_) => "outbox",
        }
    }

    /// `twilio` or `outbox`, for logs and metric labels (and the kind of target an SMS goes to).
    pub fn kind(&self) -> &'static str {
        match self {
            SmsSender::Twilio(_) => "twilio",
            SmsSender::Outbox(_) => "outbox",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        sms: SmsArgs,
    }

    fn parse(args: &[&str]) -> SmsArgs {
        Cli::try_parse_from(std::iter::once("test").chain(args.iter().copied()))
            .unwrap()
            .sms
    }

    #[test]
    fn neither_credential_means_the_outbox() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.jsonl");
        let args = parse(&["--sms-outbox", path.to_str().unwrap()]);
        assert_eq!(SmsSender::from_args(&args).unwrap().kind(), "outbox");
    }

    #[test]
    fn full_credentials_mean_twilio_and_the_token_never_prints() {
        let args = parse(&[
            "--twilio-account-sid",
            "AC1",
            "--twilio-auth-token",
            "s3cr3t-token",
            "--twilio-from",
            "+15005550006",
        ]);
        assert!(!format!("{args:?}").contains("s3cr3t-token"));
        let sender = SmsSender::from_args(&args).unwrap();
        assert_eq!(sender.kind(), "twilio");
        assert!(!format!("{sender:?}").contains("s3cr3t-token"));
    }

    #[test]
    fn the_token_can_come_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "from-file\n").unwrap();
        let args = parse(&[
            "--twilio-account-sid",
            "AC1",
            "--twilio-auth-token-file",
            path.to_str().unwrap(),
            "--twilio-messaging-service-sid",
            "MG1",
        ]);
        let SmsSender::Twilio(client) = SmsSender::from_args(&args).unwrap() else {
            panic!("expected Twilio");
        };
        assert_eq!(client.config().auth_token.expose(), "from-file");
    }

    #[test]
    fn half_configured_twilio_is_an_error() {
        for args in [
            vec!["--twilio-account-sid", "AC1"],
            vec!["--twilio-auth-token", "t"],
            vec!["--twilio-account-sid", "AC1", "--twilio-auth-token", "t"],
        ] {
            assert!(SmsSender::from_args(&parse(&args)).is_err(), "{args:?}");
        }
    }
}
