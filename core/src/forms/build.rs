//! Building a form version from a form body: every check a form must pass to be stored.
//!
//! Invariant: [`build_version`] returns a version only when every part of the body is valid;
//! otherwise it lists every problem, each at its JSON pointer.

use std::collections::HashSet;
use std::sync::LazyLock;

use formstream_schemas::{
    Choice, FormVersion, Notify, Question, QuestionType, Rule, Sheets, Slang,
};
use regex::Regex;

use crate::forms::body::{FormBody, SheetsBody, SlangBody};
use crate::problem::FieldProblem;
use crate::rules::{RuleSet, translate_constraint};

static FORM_ID: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$").expect("valid regex"));
static QUESTION_KEY: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-z][a-z0-9_]{0,63}$").expect("valid regex"));
static CHOICE_KEY: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$").expect("valid regex"));

const MAX_QUESTIONS: usize = 500;
const MAX_CHOICES: usize = 500;
const MAX_TITLE_CHARS: usize = 500;
const MAX_DESCRIPTION_CHARS: usize = 10_000;
/// Longer URLs than this are refused by common HTTP servers anyway.
const MAX_WEBHOOK_URL_CHARS: usize = 2_048;

/// Google's spreadsheet ids (the part of the URL after `/d/`) are URL-safe base64, 44 characters
/// today; the range leaves room for other lengths without accepting anything that is not an id.
static SPREADSHEET_ID: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z0-9_-]{10,128}$").expect("valid regex"));

/// Exactly one of a well-formed id or `create: true`: the exporter trusts it, and a typo in an id
/// is better refused at save time than dead-lettered for every response.
fn check_sheets(sheets: &SheetsBody, problems: &mut Vec<FieldProblem>) {
    match (&sheets.spreadsheet_id, sheets.create) {
        (Some(_), true) => problems.push(FieldProblem::new(
            "/sheets",
            "conflicting",
            "give either spreadsheet_id or create: true, not both",
        )),
        (None, false) => problems.push(FieldProblem::new(
            "/sheets",
            "required",
            "give spreadsheet_id (an existing spreadsheet shared with the exporter) or create: true",
        )),
        (Some(id), false) if !SPREADSHEET_ID.is_match(id) => problems.push(FieldProblem::new(
            "/sheets/spreadsheet_id",
            "invalid_spreadsheet_id",
            "a spreadsheet id is the part of its URL after /d/: 10 to 128 letters, digits, '-' or '_'",
        )),
        _ => {}
    }
}

/// Checks a form body and, when it is valid, builds version `version` of the form.
/// Every problem is reported, not just the first.
pub fn build_version(
    body: &FormBody,
    version: i32,
    now: i64,
) -> Result<FormVersion, Vec<FieldProblem>> {
    let mut problems = Vec::new();
    if let Some(id) = &body.id
        && !FORM_ID.is_match(id)
    {
        problems.push(FieldProblem::new(
            "/id",
            "invalid_id",
            "form ids are 1 to 64 letters, digits, '-' or '_', starting with a letter or digit",
        ));
    }
    if body.title.trim().is_empty() {
        problems.push(FieldProblem::new(
            "/title",
            "required",
            "a form needs a title",
        ));
    } else if body.title.chars().count() > MAX_TITLE_CHARS {
        problems.push(FieldProblem::new(
            "/title",
            "too_long",
            format!("at most {MAX_TITLE_CHARS} characters"),
        ));
    }
    if body.description.chars().count() > MAX_DESCRIPTION_CHARS {
        problems.push(FieldProblem::new(
            "/description",
            "too_long",
            format!("at most {MAX_DESCRIPTION_CHARS} characters"),
        ));
    }
    if let Some(region) = &body.default_region
        && region
            .to_ascii_uppercase()
            .parse::<phonenumber::country::Id>()
            .is_err()
    {
        problems.push(FieldProblem::new(
            "/default_region",
            "invalid_region",
            format!("{region:?} is not an ISO 3166 region code such as IN or KE"),
        ));
    }
    if body.questions.is_empty() {
        problems.push(FieldProblem::new(
            "/questions",
            "required",
            "a form needs at least one question",
        ));
    }
    if body.questions.len() > MAX_QUESTIONS {
        problems.push(FieldProblem::new(
            "/questions",
            "too_many",
            format!("at most {MAX_QUESTIONS} questions"),
        ));
    }
    let mut keys = HashSet::new();
    for (i, q) in body.questions.iter().enumerate() {
        let at = |field: &str| format!("/questions/{i}/{field}");
        if !QUESTION_KEY.is_match(&q.key) {
            problems.push(FieldProblem::new(
                at("key"),
                "invalid_key",
                "question keys are 1 to 64 lower-case letters, digits or '_', starting with a letter",
            ));
        } else if !keys.insert(q.key.as_str()) {
            problems.push(FieldProblem::new(
                at("key"),
                "duplicate_key",
                format!("key {:?} is used twice", q.key),
            ));
        }
        if q.text.trim().is_empty() {
            problems.push(FieldProblem::new(
                at("text"),
                "required",
                "a question needs its text",
            ));
        }
        let kind = QuestionType::from(q.kind);
        if kind.has_choices() {
            if q.choices.is_empty() {
                problems.push(FieldProblem::new(
                    at("choices"),
                    "required",
                    "a choice question needs choices",
                ));
            }
            if q.choices.len() > MAX_CHOICES {
                problems.push(FieldProblem::new(
                    at("choices"),
                    "too_many",
                    format!("at most {MAX_CHOICES} choices"),
                ));
            }
            let mut choice_keys = HashSet::new();
            for (j, c) in q.choices.iter().enumerate() {
                if !CHOICE_KEY.is_match(&c.key) {
                    problems.push(FieldProblem::new(
                        format!("/questions/{i}/choices/{j}/key"),
                        "invalid_key",
                        "choice keys are 1 to 64 letters, digits, '_', '.' or '-'",
                    ));
                } else if !choice_keys.insert(c.key.as_str()) {
                    problems.push(FieldProblem::new(
                        format!("/questions/{i}/choices/{j}/key"),
                        "duplicate_key",
                        format!("choice key {:?} is used twice", c.key),
                    ));
                }
                if c.text.trim().is_empty() {
                    problems.push(FieldProblem::new(
                        format!("/questions/{i}/choices/{j}/text"),
                        "required",
                        "a choice needs its text",
                    ));
                }
            }
        } else if !q.choices.is_empty() {
            problems.push(FieldProblem::new(
                at("choices"),
                "not_allowed",
                "only choice questions have choices",
            ));
        }
        match q.max_length {
            Some(n) if n < 1 => problems.push(FieldProblem::new(
                at("max_length"),
                "invalid",
                "must be at least 1",
            )),
            Some(_) if kind != QuestionType::Text => problems.push(FieldProblem::new(
                at("max_length"),
                "not_allowed",
                "only text questions have max_length",
            )),
            _ => {}
        }
    }
    let questions: Vec<Question> = body
        .questions
        .iter()
        .map(|q| Question {
            key: q.key.clone(),
            text: q.text.clone(),
            kind: q.kind.into(),
            required: q.required,
            choices: q
                .choices
                .iter()
                .map(|c| Choice {
                    key: c.key.clone(),
                    text: c.text.clone(),
                })
                .collect(),
            max_length: q.max_length,
        })
        .collect();
    let rules = rules_of(body, &questions, &mut problems);
    let receipt = crate::receipt::check(body.receipt.as_ref(), &questions, &mut problems);
    if let Some(url) = &body.notify.webhook_url
        && let Err(detail) = check_webhook_url(url)
    {
        problems.push(FieldProblem::new(
            "/notify/webhook_url",
            "invalid_webhook_url",
            detail,
        ));
    }
    if let Some(slang) = &body.slang {
        check_slang(slang, &questions, &mut problems);
    }
    if let Some(sheets) = &body.sheets {
        check_sheets(sheets, &mut problems);
    }
    let version = FormVersion {
        version,
        title: body.title.trim().to_owned(),
        description: body.description.clone(),
        default_region: body.default_region.as_ref().map(|r| r.to_ascii_uppercase()),
        questions,
        metadata_json: serde_json::Value::Object(body.metadata.clone().unwrap_or_default())
            .to_string(),
        actions_json: serde_json::Value::Object(body.actions.clone()).to_string(),
        rules,
        notify: Notify {
            sms_collector: body.notify.sms_collector,
            webhook_url: body.notify.webhook_url.clone(),
        },
        receipt,
        slang: body.slang.as_ref().map(|s| Slang {
            city_question: s.city_question.clone(),
            text_questions: s.text_questions.clone(),
        }),
        sheets: body.sheets.as_ref().map(|s| Sheets {
            spreadsheet_id: s.spreadsheet_id.clone(),
        }),
        created_at: now,
    };
    // The same compile the validate processor runs: a rule stored is a rule it can evaluate.
    if let Err(found) = RuleSet::compile(&version) {
        problems.extend(found);
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(version)
}

/// Most text questions one slang action indexes: each is a field value per response in the index.
const MAX_SLANG_TEXT_QUESTIONS: usize = 50;

/// The slang action must name questions of this version, of the right types: the slang processor
/// trusts it (a city question without choices would index every answer under no city).
fn check_slang(slang: &SlangBody, questions: &[Question], problems: &mut Vec<FieldProblem>) {
    match questions.iter().find(|q| q.key == slang.city_question) {
        None => problems.push(FieldProblem::new(
            "/slang/city_question",
            "unknown_question",
            format!("the form has no question {:?}", slang.city_question),
        )),
        Some(q) if !q.kind.has_choices() => problems.push(FieldProblem::new(
            "/slang/city_question",
            "not_a_choice_question",
            format!(
                "{:?} must be a single_choice or multiple_choice question",
                slang.city_question
            ),
        )),
        Some(_) => {}
    }
    if slang.text_questions.is_empty() {
        problems.push(FieldProblem::new(
            "/slang/text_questions",
            "required",
            "name at least one text question to index",
        ));
    } else if slang.text_questions.len() > MAX_SLANG_TEXT_QUESTIONS {
        problems.push(FieldProblem::new(
            "/slang/text_questions",
            "too_many",
            format!("at most {MAX_SLANG_TEXT_QUESTIONS} text questions"),
        ));
    }
    let mut seen = HashSet::new();
    for (i, key) in slang.text_questions.iter().enumerate() {
        let pointer = format!("/slang/text_questions/{i}");
        match questions.iter().find(|q| &q.key == key) {
            None => problems.push(FieldProblem::new(
                pointer,
                "unknown_question",
                format!("the form has no question {key:?}"),
            )),
            Some(q) if q.kind != QuestionType::Text => problems.push(FieldProblem::new(
                pointer,
                "not_a_text_question",
                format!("{key:?} must be a text question"),
            )),
            Some(_) if !seen.insert(key.as_str()) => problems.push(FieldProblem::new(
                pointer,
                "duplicate_key",
                format!("{key:?} is named twice"),
            )),
            Some(_) => {}
        }
    }
}

/// The body's rules as stored: XLSForm constraints translated to CEL. A rule that cannot become
/// CEL is reported and kept as a placeholder that always holds, so that every later problem still
/// points at its own rule's index.
fn rules_of(
    body: &FormBody,
    questions: &[Question],
    problems: &mut Vec<FieldProblem>,
) -> Vec<Rule> {
    const PLACEHOLDER: &str = "true";
    body.rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let expression = match (&r.expression, &r.constraint) {
                (Some(expression), None) => expression.clone(),
                // What GET shows for a constraint rule: accepted back unchanged, so that a client
                // can PUT a form it fetched.
                (Some(expression), Some(constraint))
                    if translate_constraint(
                        constraint,
                        r.question_keys.first().map(String::as_str),
                        questions,
                    )
                    .as_ref()
                        == Ok(expression) =>
                {
                    expression.clone()
                }
                (None, Some(constraint)) => {
                    let first = r.question_keys.first().map(String::as_str);
                    translate_constraint(constraint, first, questions).unwrap_or_else(|detail| {
                        problems.push(FieldProblem::new(
                            format!("/rules/{i}/constraint"),
                            "untranslatable_constraint",
                            detail,
                        ));
                        PLACEHOLDER.to_owned()
                    })
                }
                _ => {
                    problems.push(FieldProblem::new(
                        format!("/rules/{i}"),
                        "expression_or_constraint",
                        "a rule has either an expression (CEL) or a constraint (XLSForm); both only as GET shows them, the expression being the constraint's translation",
                    ));
                    PLACEHOLDER.to_owned()
                }
            };
            Rule {
                id: r.id.clone(),
                expression,
                constraint: r.constraint.clone(),
                message: r.message.clone(),
                question_keys: r.question_keys.clone(),
            }
        })
        .collect()
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
    use formstream_schemas::Form;

    use super::*;
    use crate::forms::body::FormView;

    fn body(json: serde_json::Value) -> FormBody {
        serde_json::from_value(json).expect("valid body shape")
    }

    #[test]
    fn a_good_form_builds() {
        let version = build_version(
            &body(serde_json::json!({
                "title": "Household survey",
                "default_region": "in",
                "questions": [
                    {"key": "income", "text": "Monthly income", "type": "number", "required": true},
                    {"key": "city", "text": "City", "type": "single_choice", "choices": [{"key": "pune", "text": "Pune"}]}
                ]
            })),
            1,
            0,
        )
        .expect("valid");
        assert_eq!(version.default_region.as_deref(), Some("IN"));
        assert_eq!(version.questions[1].kind, QuestionType::SingleChoice);
        assert_eq!(version.metadata_json, "{}");
    }

    #[test]
    fn every_problem_is_listed() {
        let problems = build_version(
            &body(serde_json::json!({
                "id": "bad id!",
                "title": " ",
                "default_region": "XX",
                "questions": [
                    {"key": "Income", "text": "x", "type": "number"},
                    {"key": "city", "text": "", "type": "single_choice"},
                    {"key": "city", "text": "again", "type": "text", "choices": [{"key": "a", "text": "A"}]}
                ]
            })),
            1,
            0,
        )
        .expect_err("invalid");
        let pointers: Vec<_> = problems
            .iter()
            .map(|p| (p.pointer.as_str(), p.code))
            .collect();
        assert_eq!(
            pointers,
            vec![
                ("/id", "invalid_id"),
                ("/title", "required"),
                ("/default_region", "invalid_region"),
                ("/questions/0/key", "invalid_key"),
                ("/questions/1/text", "required"),
                ("/questions/1/choices", "required"),
                ("/questions/2/key", "duplicate_key"),
                ("/questions/2/choices", "not_allowed"),
            ]
        );
    }

    #[test]
    fn a_form_with_rules_round_trips_through_its_view() {
        let json = serde_json::json!({
            "title": "Household survey",
            "questions": [
                {"key": "income", "text": "Monthly income", "type": "number"},
                {"key": "savings", "text": "Monthly savings", "type": "number"}
            ],
            "rules": [
                {"id": "cap", "constraint": ". <= ${income}", "message": "m", "question_keys": ["savings"]},
                {"id": "cel", "expression": "income >= 0", "message": "m"}
            ],
            "notify": {"webhook_url": "http://localhost:8081/hook"}
        });
        let version = build_version(&body(json), 1, 0).expect("valid");
        assert_eq!(version.rules[0].expression, "savings <= income");
        let form = Form {
            id: "f".into(),
            organisation: "o".into(),
            created_at: 0,
            versions: vec![version.clone()],
        };
        // What GET shows, PUT back, builds the same version.
        let mut shown = serde_json::to_value(FormView::of(&form, &version)).expect("view");
        for field in ["id", "organisation", "version", "created_at", "updated_at"] {
            shown.as_object_mut().expect("object").remove(field);
        }
        let again = build_version(&body(shown), 1, 0).expect("the view is a valid body");
        assert_eq!(again, version);

        let mismatched = serde_json::json!({
            "title": "t",
            "questions": [{"key": "income", "text": "Income", "type": "number"}],
            "rules": [{"id": "r", "expression": "true", "constraint": ". > 0", "message": "m",
                       "question_keys": ["income"]}],
            "notify": {"webhook_url": "ftp://example.org/x"}
        });
        let problems = build_version(&body(mismatched), 1, 0).expect_err("invalid");
        assert_eq!(problems[0].pointer, "/rules/0");
        assert_eq!(problems[0].code, "expression_or_constraint");
        assert_eq!(problems[1].pointer, "/notify/webhook_url");
        assert_eq!(problems[1].code, "invalid_webhook_url");
        assert_eq!(problems.len(), 2, "{problems:?}");
    }

    #[test]
    fn a_slang_action_round_trips_and_bad_ones_point_at_each_problem() {
        let questions = serde_json::json!([
            {"key": "city", "text": "City", "type": "multiple_choice",
             "choices": [{"key": "pune", "text": "Pune"}]},
            {"key": "words", "text": "Words", "type": "text"},
            {"key": "age", "text": "Age", "type": "number"}
        ]);
        let good = serde_json::json!({"title": "t", "questions": questions,
            "slang": {"city_question": "city", "text_questions": ["words"]}});
        let version = build_version(&body(good), 1, 0).expect("valid");
        let slang = version.slang.clone().expect("a slang action");
        assert_eq!(slang.city_question, "city");
        assert_eq!(slang.text_questions, ["words"]);
        let form = Form {
            id: "f".into(),
            organisation: "o".into(),
            created_at: 0,
            versions: vec![version.clone()],
        };
        let mut shown = serde_json::to_value(FormView::of(&form, &version)).expect("view");
        for field in ["id", "organisation", "version", "created_at", "updated_at"] {
            shown.as_object_mut().expect("object").remove(field);
        }
        assert_eq!(build_version(&body(shown), 1, 0).expect("valid"), version);

        let bad = serde_json::json!({"title": "t", "questions": questions,
            "slang": {"city_question": "words", "text_questions": ["age", "nope", "words", "words"]}});
        let problems = build_version(&body(bad), 1, 0).expect_err("invalid");
        let found: Vec<(&str, &str)> = problems
            .iter()
            .map(|p| (p.pointer.as_str(), p.code))
            .collect();
        assert_eq!(
            found,
            [
                ("/slang/city_question", "not_a_choice_question"),
                ("/slang/text_questions/0", "not_a_text_question"),
                ("/slang/text_questions/1", "unknown_question"),
                ("/slang/text_questions/3", "duplicate_key"),
            ]
        );
        let unknown = serde_json::json!({"title": "t", "questions": questions,
            "slang": {"city_question": "town", "text_questions": []}});
        let problems = build_version(&body(unknown), 1, 0).expect_err("invalid");
        assert_eq!(problems[0].pointer, "/slang/city_question");
        assert_eq!(problems[0].code, "unknown_question");
        assert_eq!(problems[1].pointer, "/slang/text_questions");
    }

    #[test]
    fn a_sheets_action_round_trips_and_bad_ones_point_at_the_problem() {
        let questions = serde_json::json!([{"key": "name", "text": "Name", "type": "text"}]);
        for sheets in [
            serde_json::json!({"spreadsheet_id": "1BxiMVs0XRA5nFMdKvBdBZjgmUUqptlbs74OgvE2upms"}),
            serde_json::json!({"create": true}),
        ] {
            let good = serde_json::json!({"title": "t", "questions": questions, "sheets": sheets});
            let version = build_version(&body(good), 1, 0).expect("valid");
            assert!(version.sheets.is_some());
            let form = Form {
                id: "f".into(),
                organisation: "o".into(),
                created_at: 0,
                versions: vec![version.clone()],
            };
            let mut shown = serde_json::to_value(FormView::of(&form, &version)).expect("view");
            assert_eq!(shown["sheets"], sheets);
            for field in ["id", "organisation", "version", "created_at", "updated_at"] {
                shown.as_object_mut().expect("object").remove(field);
            }
            assert_eq!(build_version(&body(shown), 1, 0).expect("valid"), version);
        }
        for (sheets, pointer, code) in [
            (serde_json::json!({}), "/sheets", "required"),
            (serde_json::json!({"create": false}), "/sheets", "required"),
            (
                serde_json::json!({"spreadsheet_id": "1BxiMVs0XRA5nFMdKvBdBZjgmUUqptlbs74OgvE2upms", "create": true}),
                "/sheets",
                "conflicting",
            ),
            (
                serde_json::json!({"spreadsheet_id": "https://docs.google.com/x"}),
                "/sheets/spreadsheet_id",
                "invalid_spreadsheet_id",
            ),
        ] {
            let bad = serde_json::json!({"title": "t", "questions": questions, "sheets": sheets});
            let problems = build_version(&body(bad), 1, 0).expect_err("invalid");
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert_eq!(
                (problems[0].pointer.as_str(), problems[0].code),
                (pointer, code)
            );
        }
    }
}
