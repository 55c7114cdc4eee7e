//! The slang processor's form action, `"slang": {"city_question": ..., "text_questions": [...]}`
//! (a top-level field of a form; the wire record's `slang`): which text answers the processor
//! indexes, and the question whose answer is the respondent's city. The city question may be a
//! single or a multiple choice (a respondent who picks several cities is counted in each).
//!
//! Invariant: a stored action names questions of its version, of the right types (the processor
//! trusts it: a city question without choices would index every answer under no city), at most
//! [`MAX_TEXT_QUESTIONS`] text questions, none twice.

use std::collections::HashSet;
use std::sync::Arc;

use formstream_core::forms::{Action, FormAction, FormBody};
use formstream_core::problem::FieldProblem;
use formstream_schemas::{FormVersion, QuestionType, Slang};
use serde::{Deserialize, Serialize};

/// The action's name: the form's top-level field.
pub const NAME: &str = "slang";

/// Most text questions one slang action indexes: each is a field value per response in the index.
pub const MAX_TEXT_QUESTIONS: usize = 50;

/// The slang action as the forms API takes and shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlangBody {
    pub city_question: String,
    pub text_questions: Vec<String>,
}

/// The action, for the gateway's registry: stored in, and shown from, the record's `slang`.
pub fn action() -> Arc<dyn FormAction> {
    Arc::new(Action::field(NAME, check, store, show))
}

fn store(body: SlangBody, version: &mut FormVersion) {
    version.slang = Some(Slang {
        city_question: body.city_question,
        text_questions: body.text_questions,
    });
}

fn show(version: &FormVersion) -> Option<SlangBody> {
    let slang = version.slang.as_ref()?;
    Some(SlangBody {
        city_question: slang.city_question.clone(),
        text_questions: slang.text_questions.clone(),
    })
}

/// The problems of `slang` in `form`, with pointers relative to the action.
fn check(slang: &SlangBody, form: &FormBody) -> Vec<FieldProblem> {
    let kind = |key: &str| {
        (form.questions.iter())
            .find(|q| q.key == key)
            .map(|q| QuestionType::from(q.kind))
    };
    let mut problems = Vec::new();
    match kind(&slang.city_question) {
        None => problems.push(FieldProblem::new(
            "/city_question",
            "unknown_question",
            format!("the form has no question {:?}", slang.city_question),
        )),
        Some(kind) if !kind.has_choices() => problems.push(FieldProblem::new(
            "/city_question",
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
            "/text_questions",
            "required",
            "name at least one text question to index",
        ));
    } else if slang.text_questions.len() > MAX_TEXT_QUESTIONS {
        problems.push(FieldProblem::new(
            "/text_questions",
            "too_many",
            format!("at most {MAX_TEXT_QUESTIONS} text questions"),
        ));
    }
    let mut seen = HashSet::new();
    for (i, key) in slang.text_questions.iter().enumerate() {
        let pointer = format!("/text_questions/{i}");
        match kind(key) {
            None => problems.push(FieldProblem::new(
                pointer,
                "unknown_question",
                format!("the form has no question {key:?}"),
            )),
            Some(kind) if kind != QuestionType::Text => problems.push(FieldProblem::new(
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
    problems
}

#[cfg(test)]
mod tests {
    use formstream_core::forms::FormActions;

    use super::*;

    /// `json` built as a form with this action registered.
    fn build(json: serde_json::Value) -> Result<FormVersion, Vec<FieldProblem>> {
        let body: FormBody = serde_json::from_value(json).expect("valid body shape");
        FormActions::new([action()]).build_version(&body, 1, 0)
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
        let version = build(good).expect("valid");
        let slang = version.slang.clone().expect("a slang action");
        assert_eq!(slang.city_question, "city");
        assert_eq!(slang.text_questions, ["words"]);
        let (_, rebuilt) = FormActions::new([action()]).shown_and_rebuilt(&version);
        assert_eq!(rebuilt, Ok(version));

        let bad = serde_json::json!({"title": "t", "questions": questions,
            "slang": {"city_question": "words", "text_questions": ["age", "nope", "words", "words"]}});
        let problems = build(bad).expect_err("invalid");
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
        let problems = build(unknown).expect_err("invalid");
        assert_eq!(problems[0].pointer, "/slang/city_question");
        assert_eq!(problems[0].code, "unknown_question");
        assert_eq!(problems[1].pointer, "/slang/text_questions");
    }
}
