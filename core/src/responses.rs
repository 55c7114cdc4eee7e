//! Validation of a submitted response against the form version it answers.
//!
//! Invariant: `validate` returns a `Response` only when every answer fits its question; otherwise it
//! returns every problem found, so that bad input never reaches a topic (promise 7).

use std::collections::{BTreeMap, HashSet};

use formstream_schemas::{Answer, Collector, FormVersion, QuestionType, Response};
use phonenumber::country;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

use crate::phones::Phones;
use crate::problem::FieldProblem;

/// The body of `POST /v1/forms/{form_id}/responses` (and of each batch item, which adds `form_id`,
/// and of a correction, which adds `revision`).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResponseBody {
    /// Only in batch items: the form answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub form_id: Option<String>,
    /// A UUID; supply it so that a retried submission counts as the same response.
    #[serde(default)]
    pub response_id: Option<String>,
    /// Only in corrections: the revision being published (1 for the first correction).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i32>,
    /// RFC 3339; the gateway's clock when absent.
    #[serde(default)]
    pub submitted_at: Option<String>,
    pub collector: CollectorBody,
    /// Answers by question key. Ordered, so that hashing a body is deterministic.
    pub answers: BTreeMap<String, Value>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Map<String, Value>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CollectorBody {
    pub id: String,
    #[serde(default)]
    pub phone: Option<String>,
}

/// Context of one validation: who submits, to what, and when.
pub struct Submission<'a> {
    pub organisation: &'a str,
    pub form_id: &'a str,
    pub form: &'a FormVersion,
    pub revision: i32,
    pub received_at: i64,
    pub max_text_chars: usize,
    /// Prefix of every pointer: "" for single requests, "/items/3" in a batch.
    pub pointer_prefix: &'a str,
    pub phones: &'a Phones,
}

pub fn validate(body: &ResponseBody, at: &Submission<'_>) -> Result<Response, Vec<FieldProblem>> {
    let mut problems = Vec::new();
    let p = |path: &str| format!("{}{}", at.pointer_prefix, path);

    let response_id = match &body.response_id {
        None => Uuid::now_v7().to_string(),
        Some(id) => match Uuid::parse_str(id) {
            Ok(uuid) if !uuid.is_nil() => uuid.hyphenated().to_string(),
            _ => {
                problems.push(FieldProblem::new(
                    p("/response_id"),
                    "invalid_uuid",
                    "response_id must be a UUID",
                ));
                String::new()
            }
        },
    };

    let submitted_at = match &body.submitted_at {
        None => at.received_at,
        Some(text) => match OffsetDateTime::parse(text, &Rfc3339) {
            Ok(t) => (t.unix_timestamp_nanos() / 1_000_000) as i64,
            Err(_) => {
                problems.push(FieldProblem::new(
                    p("/submitted_at"),
                    "invalid_timestamp",
                    "submitted_at must be an RFC 3339 timestamp such as 2026-11-28T10:15:00Z",
                ));
                0
            }
        },
    };

    let region = at
        .form
        .default_region
        .as_deref()
        .and_then(|r| r.parse::<country::Id>().ok());

    if body.collector.id.trim().is_empty() || body.collector.id.len() > 256 {
        problems.push(FieldProblem::new(
            p("/collector/id"),
            "required",
            "collector.id is 1 to 256 characters",
        ));
    }
    let collector_phone = match &body.collector.phone {
        None => None,
        Some(raw) => match at.phones.normalise(raw, region) {
            Some(e164) => Some(e164),
            None => {
                problems.push(FieldProblem::new(
                    p("/collector/phone"),
                    "invalid_phone",
                    "not a valid phone number; write it with its country code, e.g. +91 98765 43210",
                ));
                None
            }
        },
    };

    // The same text as `Value::Object(map).to_string()`, without copying the map first.
    let metadata_json = match &body.metadata {
        None => "{}".to_owned(),
        Some(map) => serde_json::to_string(map).unwrap_or_else(|_| "{}".to_owned()),
    };

    let mut answers = Vec::with_capacity(body.answers.len());
    // Answers that name a question of the form; when that is all of them (question keys are
    // unique), no answer needs looking up to find one that names none.
    let mut known = 0;
    // Unknown answers are listed before the answers' own problems, as they come in the body.
    let unknown_at = problems.len();
    for question in &at.form.questions {
        // Built only for a problem: a valid answer (the common case) allocates no pointer.
        let pointer = || p(&format!("/answers/{}", escape_pointer(&question.key)));
        let value = body.answers.get(&question.key);
        known += usize::from(value.is_some());
        let value = value.filter(|v| !is_blank(v));
        let Some(value) = value else {
            if question.required {
                problems.push(FieldProblem::new(
                    pointer(),
                    "required",
                    format!("{:?} is required", question.key),
                ));
            }
            continue;
        };
        let mut answer = Answer {
            question_key: question.key.clone(),
            text: None,
            number: None,
            choices: Vec::new(),
        };
        match question.kind {
            QuestionType::Text => match value {
                Value::String(text) => {
                    let limit = question.max_length.map(|n| n as usize).unwrap_or(at.max_text_chars);
                    if text.chars().count() > limit {
                        problems.push(FieldProblem::new(pointer(), "too_long", format!("at most {limit} characters")));
                    } else {
                        answer.text = Some(text.clone());
                    }
                }
                _ => problems.push(FieldProblem::new(pointer(), "expected_text", "expected a string")),
            },
            QuestionType::Number => match parse_number(value) {
                Some((number, text)) => {
                    answer.number = Some(number);
                    answer.text = Some(text);
                }
                None => problems.push(FieldProblem::new(
                    pointer(),
                    "not_a_number",
                    "expected a finite number, e.g. 12000 or \"12000.50\"",
                )),
            },
            QuestionType::Phone => match value.as_str().and_then(|raw| at.phones.normalise(raw, region)) {
                Some(e164) => answer.text = Some(e164),
                None => problems.push(FieldProblem::new(
                    pointer(),
                    "invalid_phone",
                    "not a valid phone number; write it with its country code, or set the form's default_region",
                )),
            },
            QuestionType::SingleChoice => match value {
                Value::String(key) if question.choices.iter().any(|c| &c.key == key) => {
                    answer.choices = vec![key.clone()];
                    answer.text = Some(key.clone());
                }
                Value::String(key) => problems.push(FieldProblem::new(
                    pointer(),
                    "unknown_choice",
                    format!("{key:?} is not a choice of {:?}", question.key),
                )),
                _ => problems.push(FieldProblem::new(pointer(), "expected_choice", "expected one choice key")),
            },
            QuestionType::MultipleChoice => match value {
                Value::Array(items) => {
                    let mut seen = HashSet::new();
                    for (i, item) in items.iter().enumerate() {
                        let at_item = || format!("{}/{i}", pointer());
                        match item.as_str() {
                            Some(key) if !question.choices.iter().any(|c| c.key == key) => {
                                problems.push(FieldProblem::new(
                                    at_item(),
                                    "unknown_choice",
                                    format!("{key:?} is not a choice of {:?}", question.key),
                                ))
                            }
                            Some(key) if !seen.insert(key) => problems.push(FieldProblem::new(
                                at_item(),
                                "duplicate_choice",
                                format!("{key:?} is chosen twice"),
                            )),
                            Some(key) => answer.choices.push(key.to_owned()),
                            None => problems.push(FieldProblem::new(at_item(), "expected_choice", "expected a choice key")),
                        }
                    }
                    answer.text = Some(answer.choices.join(","));
                }
                _ => problems.push(FieldProblem::new(pointer(), "expected_choices", "expected an array of choice keys")),
            },
        }
        answers.push(answer);
    }
    if known < body.answers.len() {
        let unknown = body
            .answers
            .keys()
            .filter(|key| at.form.question(key).is_none())
            .map(|key| {
                FieldProblem::new(
                    p(&format!("/answers/{}", escape_pointer(key))),
                    "unknown_question",
                    format!("form version {} has no question {key:?}", at.form.version),
                )
            });
        problems.splice(unknown_at..unknown_at, unknown.collect::<Vec<_>>());
    }

    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Response {
        response_id,
        form_id: at.form_id.to_owned(),
        form_version: at.form.version,
        organisation: at.organisation.to_owned(),
        revision: at.revision,
        submitted_at,
        received_at: at.received_at,
        collector: Collector {
            id: body.collector.id.clone(),
            phone: collector_phone,
        },
        answers,
        metadata_json,
    })
}

/// Null, an empty string and an empty array all mean "not answered".
fn is_blank(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::String(s) => s.trim().is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

/// A JSON number, or a string holding one (collector apps often send numbers as text).
fn parse_number(value: &Value) -> Option<(f64, String)> {
    let (number, text) = match value {
        Value::Number(n) => (n.as_f64()?, n.to_string()),
        Value::String(s) => {
            let trimmed = s.trim();
            (trimmed.parse::<f64>().ok()?, trimmed.to_owned())
        }
        _ => return None,
    };
    number.is_finite().then_some((number, text))
}

/// RFC 6901 escaping of one pointer segment.
fn escape_pointer(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use formstream_schemas::Question;
    use formstream_schemas::fixtures::{self, choice_question, question};

    fn form() -> FormVersion {
        let required = |question: Question| Question {
            required: true,
            ..question
        };
        FormVersion {
            default_region: Some("IN".into()),
            ..fixtures::version(
                3,
                vec![
                    required(question("name", QuestionType::Text)),
                    required(question("income", QuestionType::Number)),
                    question("phone", QuestionType::Phone),
                    choice_question("city", QuestionType::SingleChoice, &["pune", "delhi"]),
                    choice_question("langs", QuestionType::MultipleChoice, &["hi", "mr", "en"]),
                ],
            )
        }
    }

    fn submit(body: serde_json::Value) -> Result<Response, Vec<FieldProblem>> {
        let body: ResponseBody = serde_json::from_value(body).expect("body shape");
        let form = form();
        validate(
            &body,
            &Submission {
                organisation: "acme",
                form_id: "f1",
                form: &form,
                revision: 0,
                received_at: 1_000,
                max_text_chars: 10,
                pointer_prefix: "",
                phones: &Phones::default(),
            },
        )
    }

    #[test]
    fn a_valid_response_is_normalised() {
        let response = submit(serde_json::json!({
            "collector": {"id": "c1", "phone": "098765 43210"},
            "answers": {"name": "Asha", "income": "12000.50", "phone": "+91 98765 43210", "city": "pune", "langs": ["mr", "hi"]}
        }))
        .expect("valid");
        assert_eq!(response.form_version, 3);
        assert_eq!(response.collector.phone.as_deref(), Some("+919876543210"));
        assert_eq!(
            response.answer("income").and_then(|a| a.number),
            Some(12000.5)
        );
        assert_eq!(
            response.answer("phone").and_then(|a| a.text.as_deref()),
            Some("+919876543210")
        );
        assert_eq!(
            response.answer("langs").map(|a| a.choices.clone()),
            Some(vec!["mr".into(), "hi".into()])
        );
        assert_eq!(response.submitted_at, 1_000);
        assert!(Uuid::parse_str(&response.response_id).is_ok());
    }

    #[test]
    fn every_field_problem_is_reported() {
        let problems = submit(serde_json::json!({
            "response_id": "not-a-uuid",
            "collector": {"id": "c1"},
            "answers": {"name": "far too long a name", "income": "lots", "phone": "12", "city": "mumbai", "langs": ["hi", "xx", "hi"], "bogus": 1}
        }))
        .expect_err("invalid");
        let found: Vec<_> = problems
            .iter()
            .map(|p| (p.pointer.as_str(), p.code))
            .collect();
        assert_eq!(
            found,
            vec![
                ("/response_id", "invalid_uuid"),
                ("/answers/bogus", "unknown_question"),
                ("/answers/name", "too_long"),
                ("/answers/income", "not_a_number"),
                ("/answers/phone", "invalid_phone"),
                ("/answers/city", "unknown_choice"),
                ("/answers/langs/1", "unknown_choice"),
                ("/answers/langs/2", "duplicate_choice"),
            ]
        );
    }

    #[test]
    fn missing_required_answers_are_reported() {
        let problems = submit(serde_json::json!({"collector": {"id": "c1"}, "answers": {"name": "  ", "income": null}}))
            .expect_err("invalid");
        let found: Vec<_> = problems
            .iter()
            .map(|p| (p.pointer.as_str(), p.code))
            .collect();
        assert_eq!(
            found,
            vec![
                ("/answers/name", "required"),
                ("/answers/income", "required")
            ]
        );
    }
}
