//! The journal's form action, which the journal owns (no gateway code knows it): a form with
//! `"actions": {"journal": {"answers": ["name", "village"]}}` has those answers written into its
//! journal lines too, so the journal archives what was answered and not only which revision.
//!
//! Invariant: a saved form's journal action names at least one question, each a question of that
//! form (checked when the form is saved: problems at `/actions/journal/answers/<i>`).

use std::sync::Arc;

use formstream_core::forms::{Action, FormAction, FormBody};
use formstream_core::problem::FieldProblem;
use formstream_schemas::Response;
use serde::Deserialize;
use serde_json::{Map, Value, json};

/// The action's name: its key in a form's `actions`.
pub const NAME: &str = "journal";

/// Its settings (unknown fields are refused).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalAction {
    /// Keys of the questions whose answers the journal lines carry.
    pub answers: Vec<String>,
}

/// The action, for the gateway's registry.
pub fn action() -> Arc<dyn FormAction> {
    Arc::new(Action::new(NAME, check))
}

fn check(action: &JournalAction, form: &FormBody) -> Vec<FieldProblem> {
    if action.answers.is_empty() {
        return vec![FieldProblem::new(
            "/answers",
            "required",
            "name at least one question whose answers the journal keeps",
        )];
    }
    (action.answers.iter().enumerate())
        .filter(|(_, key)| !form.questions.iter().any(|q| q.key == **key))
        .map(|(i, key)| {
            FieldProblem::new(
                format!("/answers/{i}"),
                "unknown_question",
                format!("the form has no question {key:?}"),
            )
        })
        .collect()
}

/// The answers of `response` that `action` names, by question key (unanswered ones left out).
pub fn answers(action: &JournalAction, response: &Response) -> Value {
    let mut answers = Map::new();
    for answer in &response.answers {
        if action.answers.contains(&answer.question_key) {
            let value =
                json!({"text": answer.text, "number": answer.number, "choices": answer.choices});
            answers.insert(answer.question_key.clone(), value);
        }
    }
    Value::Object(answers)
}
