//! What a data collector is told about a flagged response: the SMS text and the webhook payload.
//!
//! Invariant: both are pure functions of the flag, the form version and the configured correction
//! URL, never of the time of sending, so that every retry of one notification carries the same
//! text, the same reference and the same webhook body. Each says which response (id, form title,
//! revision), which rules (their messages), and how to correct it (the PUT that publishes the next
//! revision).

use formstream_core::identity::ResponseKey;
use formstream_schemas::{ResponseFlag, Violation};
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The SMS length aimed for: Twilio's recommendation (two concatenated segments of GSM-7 text).
/// Rule messages are cut (with "+N more") to stay within it; only ids, a title and a URL so long
/// that nothing fits go past it (Twilio's hard limit is 1600).
pub const SMS_TARGET_CHARS: usize = 320;
/// Longest form title quoted in an SMS; the title only helps the collector recognise the form.
const TITLE_CHARS: usize = 30;
/// A rule message is never cut shorter than this, even past [`SMS_TARGET_CHARS`]: a shorter stub
/// tells the collector nothing.
const MIN_RULE_CHARS: usize = 24;

/// The webhook event type of a flagged response.
pub const FLAGGED_EVENT: &str = "response.flagged";

/// The reference carried in the SMS body, e.g. `FS3F2A9C1B7ER2`: ASCII letters and digits only
/// (a Messaging Service's smart encoding leaves them alone), so that reconciliation finds the
/// message in Twilio's list by recipient and reference. Derived from a hash of the response id
/// rather than its prefix: UUIDv7 prefixes are timestamps, equal for responses submitted together.
/// 40 bits: collisions only matter between messages to one collector within a few days. The hash
/// is of the response's whole identity ([`ResponseKey`]), so that another organisation reusing the
/// response id cannot send a message that reconciliation would take for this one.
pub fn reference(flag: &ResponseFlag) -> String {
    format!(
        "{}R{}",
        formstream_notify::reference::short("FS", &identity(flag).to_string()),
        flag.revision
    )
}

/// The identity of the flagged response: (organisation, form id, response id).
pub fn identity(flag: &ResponseFlag) -> ResponseKey<'_> {
    ResponseKey {
        organisation: &flag.organisation,
        form_id: &flag.form_id,
        response_id: &flag.response_id,
    }
}

/// The `webhook-id` of the notification of (response, revision): the same for every retry and
/// redelivery, so that receivers deduplicate.
pub fn webhook_id(flag: &ResponseFlag) -> String {
    format!("flag_{}_{}", flag.response_id, flag.revision)
}

/// The ledger key of one channel's notification of (response, revision), the response named by
/// its whole identity: `<organisation>/<form id>/<response id>:<revision>:<channel>`.
pub fn ledger_key(flag: &ResponseFlag, channel: &str) -> String {
    format!("{}:{}:{channel}", identity(flag), flag.revision)
}

/// The key [`ledger_key`] was before keys named the organisation and the form (consulted, never
/// written; see [`formstream_notify::once`]).
pub fn legacy_ledger_key(flag: &ResponseFlag, channel: &str) -> String {
    format!("{}:{}:{channel}", flag.response_id, flag.revision)
}

/// The correction endpoint of the flagged response.
pub fn correction_url(base_url: &str, flag: &ResponseFlag) -> String {
    format!(
        "{}/v1/forms/{}/responses/{}",
        base_url.trim_end_matches('/'),
        flag.form_id,
        flag.response_id
    )
}

/// The SMS to the collector, within [`SMS_TARGET_CHARS`] where possible, e.g.
/// `Response 0b9e... ("Household survey", rev 0) flagged: Savings cannot exceed income (+1 more).
/// Correct it: PUT https://.../v1/forms/household/responses/0b9e... with "revision": 1. Ref FS..R0`.
pub fn sms_body(flag: &ResponseFlag, title: &str, correction_url: &str) -> String {
    let head = format!(
        "Response {} (\"{}\", rev {}) flagged: ",
        flag.response_id,
        shorten(&one_line(title), TITLE_CHARS),
        flag.revision
    );
    let tail = format!(
        ". Correct it: PUT {correction_url} with \"revision\": {}. Ref {}",
        flag.revision.saturating_add(1),
        reference(flag)
    );
    let budget = SMS_TARGET_CHARS.saturating_sub(chars(&head) + chars(&tail));
    let messages: Vec<String> = flag.violations.iter().map(rule_text).collect();
    format!("{head}{}{tail}", fit_rules(&messages, budget))
}

/// As many rule messages as fit in `budget` characters, in order, then "(+N more)"; if not even
/// the first fits, the first one cut short.
fn fit_rules(messages: &[String], budget: usize) -> String {
    let total = messages.len();
    if total == 0 {
        return "a rule failed".to_owned();
    }
    let more = |shown: usize| {
        if shown < total {
            format!(" (+{} more)", total - shown)
        } else {
            String::new()
        }
    };
    for shown in (1..=total).rev() {
        let text = format!("{}{}", messages[..shown].join("; "), more(shown));
        if chars(&text) <= budget {
            return text;
        }
    }
    let more = more(1);
    let room = budget.saturating_sub(chars(&more)).max(MIN_RULE_CHARS);
    format!("{}{more}", shorten(&messages[0], room))
}

/// A violation as the collector reads it: its message (the rule id if the form gave none).
fn rule_text(violation: &Violation) -> String {
    let text = one_line(&violation.message);
    if text.is_empty() {
        violation.rule_id.clone()
    } else {
        text
    }
}

/// Control characters (line breaks) as spaces, trimmed: an SMS is one paragraph.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_owned()
}

fn chars(text: &str) -> usize {
    text.chars().count()
}

/// `text` cut to at most `max` characters, ending with "..." when cut (ASCII, so that a GSM-7
/// message stays GSM-7).
fn shorten(text: &str, max: usize) -> String {
    if chars(text) <= max {
        return text.to_owned();
    }
    let kept: String = text.chars().take(max.saturating_sub(3)).collect();
    format!("{}...", kept.trim_end())
}

/// The `data` of a `response.flagged` webhook.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FlaggedEvent {
    pub response_id: String,
    pub form_id: String,
    pub form_version: i32,
    pub form_title: String,
    pub organisation: String,
    pub revision: i32,
    pub collector_id: String,
    pub violations: Vec<FlaggedRule>,
    /// When validate evaluated the revision (RFC 3339).
    pub evaluated_at: String,
    /// The reference the SMS carries, so that both notifications can be matched.
    pub reference: String,
    pub correction: Correction,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FlaggedRule {
    pub rule_id: String,
    pub message: String,
    pub question_keys: Vec<String>,
    /// Set when the rule could not be evaluated on this response (it flags it so a person looks).
    pub error: Option<String>,
}

/// How to correct the response: the gateway's PUT with the next revision.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Correction {
    pub method: &'static str,
    pub url: String,
    pub revision: i32,
    pub description: String,
}

/// When the flag was evaluated (the envelope's timestamp: the same on every retry).
pub fn evaluated_at(flag: &ResponseFlag) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(flag.evaluated_at) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// The webhook payload of a flagged response.
pub fn flagged_event(flag: &ResponseFlag, title: &str, correction_url: &str) -> FlaggedEvent {
    let next = flag.revision.saturating_add(1);
    FlaggedEvent {
        response_id: flag.response_id.clone(),
        form_id: flag.form_id.clone(),
        form_version: flag.form_version,
        form_title: title.to_owned(),
        organisation: flag.organisation.clone(),
        revision: flag.revision,
        collector_id: flag.collector_id.clone(),
        violations: flag
            .violations
            .iter()
            .map(|v| FlaggedRule {
                rule_id: v.rule_id.clone(),
                message: v.message.clone(),
                question_keys: v.question_keys.clone(),
                error: v.error.clone(),
            })
            .collect(),
        evaluated_at: evaluated_at(flag).format(&Rfc3339).unwrap_or_default(),
        reference: reference(flag),
        correction: Correction {
            method: "PUT",
            url: correction_url.to_owned(),
            revision: next,
            description: format!(
                "PUT the corrected response to this URL with \"revision\": {next}; it is validated again and the flag is resolved when it passes."
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use formstream_schemas::FlagStatus;

    use super::*;

    const RESPONSE: &str = "0b9e4a44-5c1d-4f7e-9a51-3d2b8c7e6f10";

    fn flag(messages: &[&str]) -> ResponseFlag {
        ResponseFlag {
            response_id: RESPONSE.to_owned(),
            form_id: "household".to_owned(),
            form_version: 1,
            organisation: "acme".to_owned(),
            revision: 2,
            collector_id: "collector-17".to_owned(),
            collector_phone: Some("+919876543210".to_owned()),
            status: FlagStatus::Flagged,
            violations: messages
                .iter()
                .enumerate()
                .map(|(i, m)| Violation {
                    rule_id: format!("rule_{i}"),
                    message: (*m).to_owned(),
                    question_keys: vec!["monthly_income".to_owned()],
                    error: None,
                })
                .collect(),
            evaluated_at: 1_700_000_000_000,
        }
    }

    fn url(flag: &ResponseFlag) -> String {
        correction_url("https://forms.example.org/", flag)
    }

    #[test]
    fn the_sms_says_which_response_which_rules_and_how_to_correct() {
        let flag = flag(&["Savings cannot exceed income.", "Check the age."]);
        let body = sms_body(&flag, "Household survey", &url(&flag));
        assert_eq!(
            body,
            format!(
                "Response {RESPONSE} (\"Household survey\", rev 2) flagged: Savings cannot exceed \
                 income.; Check the age.. Correct it: PUT https://forms.example.org/v1/forms/\
                 household/responses/{RESPONSE} with \"revision\": 3. Ref {}",
                reference(&flag)
            )
        );
        assert!(chars(&body) <= SMS_TARGET_CHARS, "{}", chars(&body));
    }

    #[test]
    fn rules_that_do_not_fit_become_plus_n_more() {
        let long = "Monthly savings cannot be more than the monthly income of the household";
        let flag = flag(&[long, long, long, long, long]);
        let body = sms_body(&flag, "Household survey", &url(&flag));
        assert!(
            chars(&body) <= SMS_TARGET_CHARS,
            "{} chars: {body}",
            chars(&body)
        );
        assert!(body.contains(" (+4 more). Correct it: PUT"), "{body}");
        assert!(body.contains(&reference(&flag)));
    }

    #[test]
    fn a_first_rule_too_long_is_cut_and_the_budget_holds() {
        let huge = "x".repeat(500);
        let flag = flag(&[&huge, "second"]);
        let body = sms_body(&flag, &"T".repeat(200), &url(&flag));
        assert!(chars(&body) <= SMS_TARGET_CHARS, "{} chars", chars(&body));
        assert!(body.contains("x... (+1 more)"), "{body}");
        // The title is cut too.
        assert!(
            body.contains(&format!("(\"{}...\"", "T".repeat(27))),
            "{body}"
        );
    }

    #[test]
    fn past_the_target_only_when_ids_and_url_leave_no_room() {
        let flag = flag(&["Savings cannot exceed income."]);
        let base = format!("https://{}.example.org", "a".repeat(200));
        let body = sms_body(&flag, "Survey", &correction_url(&base, &flag));
        assert!(body.contains("Savings cannot exceed..."), "{body}");
        assert!(chars(&body) > SMS_TARGET_CHARS && chars(&body) < 1600);
    }

    #[test]
    fn messages_are_one_line_and_empty_ones_name_the_rule() {
        let flag = flag(&["Line one\nline two", ""]);
        let body = sms_body(&flag, "A\r\nB", &url(&flag));
        assert!(!body.contains('\n') && !body.contains('\r'));
        assert!(body.contains("Line one line two; rule_1"), "{body}");
    }

    #[test]
    fn references_are_short_ascii_and_stable() {
        let at = |response_id: &str, revision: i32| {
            let mut flag = flag(&[]);
            flag.response_id = response_id.to_owned();
            flag.revision = revision;
            flag
        };
        let a = reference(&at(RESPONSE, 0));
        assert_eq!(a, reference(&at(RESPONSE, 0)));
        assert_ne!(a, reference(&at(RESPONSE, 1)));
        // UUIDv7s created together share their prefix; their references do not.
        assert_ne!(
            reference(&at("01890a5d-ac96-774b-bcce-b302099a8057", 0)),
            reference(&at("01890a5d-ac96-774b-bcce-b302099a8058", 0))
        );
        // Another organisation's response with the same id and revision has another reference.
        let mut other = at(RESPONSE, 0);
        other.organisation = "globex".to_owned();
        assert_ne!(a, reference(&other));
        assert!(
            a.starts_with("FS") && a.ends_with("R0") && a.len() == 14,
            "{a}"
        );
        assert!(a.bytes().all(|b| b.is_ascii_alphanumeric()));
    }

    #[test]
    fn the_webhook_payload_is_complete_and_stable() {
        let flag = flag(&["Savings cannot exceed income."]);
        let event = flagged_event(&flag, "Household survey", &url(&flag));
        assert_eq!(event, flagged_event(&flag, "Household survey", &url(&flag)));
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["response_id"], RESPONSE);
        assert_eq!(json["revision"], 2);
        assert_eq!(json["form_title"], "Household survey");
        assert_eq!(
            json["violations"][0]["message"],
            "Savings cannot exceed income."
        );
        assert_eq!(json["evaluated_at"], "2023-11-14T22:13:20Z");
        assert_eq!(json["correction"]["method"], "PUT");
        assert_eq!(json["correction"]["revision"], 3);
        assert_eq!(
            json["correction"]["url"],
            format!("https://forms.example.org/v1/forms/household/responses/{RESPONSE}")
        );
        assert!(json.get("collector_phone").is_none());
        assert_eq!(webhook_id(&flag), format!("flag_{RESPONSE}_2"));
        assert_eq!(
            ledger_key(&flag, "sms"),
            format!("acme/household/{RESPONSE}:2:sms")
        );
        assert_eq!(legacy_ledger_key(&flag, "sms"), format!("{RESPONSE}:2:sms"));
    }
}
