//! The notify-collectors processor's form action, `"notify": {"sms_collector": true,
//! "webhook_url": "https://..."}` (a top-level field of a form, `{}` when absent; the wire
//! record's `notify`): who is told about the form's flagged responses.
//!
//! Invariant: a stored webhook URL is an https URL (plain http only to loopback hosts, which local
//! development and the tests' receivers use), without credentials, of at most
//! [`MAX_WEBHOOK_URL_CHARS`] characters: webhooks carry response data, so they go over TLS.

use std::sync::Arc;

use formstream_core::forms::{Action, FormAction, FormBody};
use formstream_core::problem::FieldProblem;
use formstream_schemas::{FormVersion, Notify};
use serde::{Deserialize, Serialize};

/// The action's name: the form's top-level field.
pub const NAME: &str = "notify";

/// Longer URLs than this are refused by common HTTP servers anyway.
pub const MAX_WEBHOOK_URL_CHARS: usize = 2_048;

/// Who is told about flagged responses, as the forms API takes and shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyBody {
    #[serde(default)]
    pub sms_collector: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
}

/// The action, for the gateway's registry: stored in, and shown from, the record's `notify`.
pub fn action() -> Arc<dyn FormAction> {
    Arc::new(Action::field(NAME, check, store, show))
}

fn store(body: NotifyBody, version: &mut FormVersion) {
    version.notify = Notify {
        sms_collector: body.sms_collector,
        webhook_url: body.webhook_url,
    };
}

/// Always shown, as `{"sms_collector": false}` for a form that tells nobody.
fn show(version: &FormVersion) -> Option<NotifyBody> {
    Some(NotifyBody {
        sms_collector: version.notify.sms_collector,
        webhook_url: version.notify.webhook_url.clone(),
    })
}

fn check(notify: &NotifyBody, _form: &FormBody) -> Vec<FieldProblem> {
    let Some(url) = &notify.webhook_url else {
        return Vec::new();
    };
    match check_webhook_url(url) {
        Ok(()) => Vec::new(),
        Err(detail) => vec![FieldProblem::new(
            "/webhook_url",
            "invalid_webhook_url",
            detail,
        )],
    }
}

/// Webhooks carry response data, so they go over TLS. Plain http is allowed only to this machine
/// (loopback), which is what local development and the tests' receivers use.
fn check_webhook_url(raw: &str) -> Result<(), String> {
    if raw.chars().count() > MAX_WEBHOOK_URL_CHARS {
        return Err(format!("at most {MAX_WEBHOOK_URL_CHARS} characters"));
    }
    let url = url::Url::parse(raw).map_err(|e| format!("not a URL: {e}"))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err("credentials do not belong in the URL; webhooks are signed instead".to_owned());
    }
    let loopback = match url.host() {
        Some(url::Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => return Err("the URL has no host".to_owned()),
    };
    match url.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        _ => Err(
            "webhooks are sent over https; http is allowed only to loopback hosts (localhost, 127.0.0.1, [::1])"
                .to_owned(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use formstream_core::forms::FormActions;
    use serde_json::json;

    use super::*;

    fn build(notify: serde_json::Value) -> Result<FormVersion, Vec<(String, &'static str)>> {
        let mut body = json!({
            "title": "t",
            "questions": [{"key": "name", "text": "Name", "type": "text"}],
        });
        if !notify.is_null() {
            body["notify"] = notify;
        }
        let body: FormBody = serde_json::from_value(body).expect("valid body shape");
        let problems = FormActions::new([action()]).build_version(&body, 1, 0);
        problems.map_err(|found| found.into_iter().map(|p| (p.pointer, p.code)).collect())
    }

    #[test]
    fn a_notify_action_round_trips_and_bad_webhooks_are_refused() {
        let good = json!({"sms_collector": true, "webhook_url": "http://localhost:8081/hook"});
        let version = build(good.clone()).expect("valid");
        assert!(version.notify.sms_collector);
        let actions = FormActions::new([action()]);
        let (shown, rebuilt) = actions.shown_and_rebuilt(&version);
        assert_eq!((&shown["notify"], rebuilt), (&good, Ok(version)));
        // A form without it tells nobody, and shows so.
        let none = build(serde_json::Value::Null).expect("valid");
        assert_eq!(none.notify, Notify::default());
        let (shown, rebuilt) = actions.shown_and_rebuilt(&none);
        assert_eq!(shown["notify"], json!({"sms_collector": false}));
        assert_eq!(rebuilt, Ok(none));

        let refused = |url: &str| build(json!({"webhook_url": url})).expect_err("invalid");
        for url in [
            "ftp://example.org/x",
            "http://example.org/hook",
            "https://user:pw@example.org/hook",
            "not a url",
        ] {
            assert_eq!(
                refused(url),
                [("/notify/webhook_url".to_owned(), "invalid_webhook_url")],
                "{url}"
            );
        }
        assert!(build(json!({"webhook_url": "https://example.org/hook"})).is_ok());
        assert!(build(json!({"webhook_url": "http://[::1]:9/hook"})).is_ok());
        // `null` is not a notify action: refused as the wrong shape, as when core typed it.
        let body: FormBody = serde_json::from_value(json!({
            "title": "t",
            "questions": [{"key": "name", "text": "Name", "type": "text"}],
            "notify": null,
        }))
        .expect("valid body shape");
        let problems = actions.build_version(&body, 1, 0).expect_err("invalid");
        assert_eq!(
            (problems[0].pointer.as_str(), problems[0].code),
            ("/notify", "invalid_shape")
        );
    }
}
