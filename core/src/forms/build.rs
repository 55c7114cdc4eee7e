//! Building a form version from a form body: the checks of the form itself (its questions); its
//! processors' actions, its rules (the validate processor's) included, are checked by their
//! owners ([`super::FormActions`], which builds a version with both).
//!
//! Invariant: every problem of the form's own parts is listed, each at its JSON pointer.

use std::collections::HashSet;
use std::sync::LazyLock;

use formstream_schemas::{FormVersion, Question, QuestionType};
use regex::Regex;

use crate::forms::body::FormBody;
use crate::problem::FieldProblem;

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
/// Version `version` of the form as `body` gives it, without its actions' typed fields (their
/// owners fill them), and the problems of its own parts: every problem, not just the first.
pub(crate) fn draft_version(
    body: &FormBody,
    version: i32,
    now: i64,
) -> (FormVersion, Vec<FieldProblem>) {
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
    let questions: Vec<Question> = body.questions.iter().map(Question::from).collect();
    let version = FormVersion {
        version,
        title: body.title.trim().to_owned(),
        description: body.description.clone(),
        default_region: body.default_region.as_ref().map(|r| r.to_ascii_uppercase()),
        questions,
        metadata_json: serde_json::Value::Object(body.metadata.clone().unwrap_or_default())
            .to_string(),
        actions_json: serde_json::Value::Object(body.actions.clone()).to_string(),
        rules: Vec::new(),
        notify: Default::default(),
        receipt: None,
        slang: None,
        sheets: None,
        created_at: now,
    };
    (version, problems)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forms::FormActions;

    fn body(json: serde_json::Value) -> FormBody {
        serde_json::from_value(json).expect("valid body shape")
    }

    /// The form's own checks (no processor's action registered).
    fn build_version(
        body: &FormBody,
        version: i32,
        now: i64,
    ) -> Result<FormVersion, Vec<FieldProblem>> {
        FormActions::default().build_version(body, version, now)
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
    fn actions_no_registered_processor_owns_are_refused() {
        let body = body(serde_json::json!({
            "title": "t",
            "questions": [{"key": "income", "text": "Income", "type": "number"}],
            "rules": [{"id": "r", "expression": "income > 0", "message": "m"}],
            "receipt": {"phone_question": "income", "template": "t"}
        }));
        let problems = build_version(&body, 1, 0).expect_err("invalid");
        let pointers: Vec<_> = (problems.iter())
            .map(|p| (p.pointer.as_str(), p.code))
            .collect();
        assert_eq!(
            pointers,
            [("/rules", "unknown_action"), ("/receipt", "unknown_action")]
        );
    }
}
