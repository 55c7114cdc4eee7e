//! The validate processor's form action, `"rules": [{"id": ..., "expression": ..., "message":
//! ...}]` (a top-level field of a form; the wire record's `rules`): the business rules every
//! response revision is checked against. A rule is CEL in `expression`, or an XLSForm
//! `constraint` that is translated to CEL when the form is saved (and then shown with both).
//!
//! The gateway checks the action when the form is saved, in two steps that keep the order of a
//! 422's problems: [`check`] (right after the form's own checks: each rule is an expression or a
//! translatable constraint) and [`check_built`] (after every action field is built: the rules
//! compile against the stored questions, within the budget, with the same compile the processor
//! runs, `formstream_core::rules`).
//!
//! Invariant: a stored rule set is one this processor compiles, so a stored form's rules never
//! fail for a reason the gateway could have seen; what `GET` shows of a form's rules, `PUT` back,
//! stores the same rules.

use std::sync::Arc;

use formstream_core::forms::{Action, FormAction, FormBody};
use formstream_core::problem::FieldProblem;
use formstream_core::rules::{RuleSet, translate_constraint};
use formstream_schemas::{FormVersion, Question, Rule};
use serde::{Deserialize, Serialize};

/// The action's name: the form's top-level field.
pub const NAME: &str = "rules";

/// A business rule as the API takes and shows it: CEL in `expression`, or an XLSForm
/// `constraint` that the gateway translates to CEL (and then shows both).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleBody {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expression: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub constraint: Option<String>,
    pub message: String,
    #[serde(default)]
    pub question_keys: Vec<String>,
}

/// A form's rules, as the API takes and shows them (a JSON list).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RulesBody(pub Vec<RuleBody>);

/// The action, for the gateway's registry: stored in, and shown from, the record's `rules`.
pub fn action() -> Arc<dyn FormAction> {
    Arc::new(Action::field(NAME, check, store, show).with_check_built(check_built))
}

/// Problems of the rules as given: a rule that is neither an expression nor a translatable
/// constraint; pointers relative to the action (`/1/constraint`).
fn check(RulesBody(rules): &RulesBody, form: &FormBody) -> Vec<FieldProblem> {
    let questions: Vec<Question> = form.questions.iter().map(Question::from).collect();
    let mut problems = Vec::new();
    translate(rules, &questions, &mut problems);
    problems
}

/// Problems of the rules as stored with the `version` the form builds: the processor's compile
/// (names, types, the budget); pointers relative to the action. A rule [`check`] refused is tried
/// as one that always holds, so that every other rule's problems are still listed.
fn check_built(RulesBody(rules): &RulesBody, version: &FormVersion) -> Vec<FieldProblem> {
    let compiled = FormVersion {
        rules: translate(rules, &version.questions, &mut Vec::new()),
        ..version.clone()
    };
    match RuleSet::compile(&compiled) {
        Ok(_) => Vec::new(),
        Err(problems) => (problems.into_iter())
            .map(|mut problem| {
                // The engine points from the form's root; the registry adds `/rules` back.
                if let Some(relative) = problem.pointer.strip_prefix("/rules") {
                    problem.pointer = relative.to_owned();
                }
                problem
            })
            .collect(),
    }
}

fn store(RulesBody(rules): RulesBody, version: &mut FormVersion) {
    version.rules = translate(&rules, &version.questions, &mut Vec::new());
}

fn show(version: &FormVersion) -> Option<RulesBody> {
    let shown = (version.rules.iter()).map(|r| RuleBody {
        id: r.id.clone(),
        expression: Some(r.expression.clone()),
        constraint: r.constraint.clone(),
        message: r.message.clone(),
        question_keys: r.question_keys.clone(),
    });
    Some(RulesBody(shown.collect()))
}

/// The rules as stored: XLSForm constraints translated to CEL. A rule that cannot become CEL is
/// reported in `problems` and kept as a placeholder that always holds, so that every later problem
/// still points at its own rule's index.
fn translate(
    rules: &[RuleBody],
    questions: &[Question],
    problems: &mut Vec<FieldProblem>,
) -> Vec<Rule> {
    const PLACEHOLDER: &str = "true";
    rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let first = r.question_keys.first().map(String::as_str);
            let expression = match (&r.expression, &r.constraint) {
                (Some(expression), None) => expression.clone(),
                // What GET shows for a constraint rule: accepted back unchanged, so that a client
                // can PUT a form it fetched.
                (Some(expression), Some(constraint))
                    if translate_constraint(constraint, first, questions).as_ref()
                        == Ok(expression) =>
                {
                    expression.clone()
                }
                (None, Some(constraint)) => translate_constraint(constraint, first, questions)
                    .unwrap_or_else(|detail| {
                        problems.push(FieldProblem::new(
                            format!("/{i}/constraint"),
                            "untranslatable_constraint",
                            detail,
                        ));
                        PLACEHOLDER.to_owned()
                    }),
                _ => {
                    problems.push(FieldProblem::new(
                        format!("/{i}"),
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

#[cfg(test)]
mod tests {
    use formstream_core::forms::FormActions;
    use serde_json::{Value, json};

    use super::*;

    fn body(json: Value) -> FormBody {
        serde_json::from_value(json).expect("valid body shape")
    }

    fn pointers(problems: &[FieldProblem]) -> Vec<(&str, &'static str)> {
        problems
            .iter()
            .map(|p| (p.pointer.as_str(), p.code))
            .collect()
    }

    #[test]
    fn a_form_with_rules_round_trips_through_its_view() {
        let actions = FormActions::new([action()]);
        let json = json!({
            "title": "Household survey",
            "questions": [
                {"key": "income", "text": "Monthly income", "type": "number"},
                {"key": "savings", "text": "Monthly savings", "type": "number"}
            ],
            "rules": [
                {"id": "cap", "constraint": ". <= ${income}", "message": "m", "question_keys": ["savings"]},
                {"id": "cel", "expression": "income >= 0", "message": "m"}
            ]
        });
        let version = actions.build_version(&body(json), 1, 0).expect("valid");
        assert_eq!(version.rules[0].expression, "savings <= income");
        // What GET shows, PUT back, builds the same version.
        let (shown, rebuilt) = actions.shown_and_rebuilt(&version);
        assert_eq!(rebuilt, Ok(version));
        assert_eq!(shown["rules"][0]["constraint"], ". <= ${income}");
        assert_eq!(shown["rules"][0]["expression"], "savings <= income");
        // A form without rules shows an empty list, as before the action was validate's.
        let plain = json!({"title": "t", "questions": [{"key": "a", "text": "A", "type": "text"}]});
        let version = actions.build_version(&body(plain), 1, 0).expect("valid");
        assert_eq!(actions.shown_and_rebuilt(&version).0["rules"], json!([]));
    }

    /// Translation problems come first, the compile's after every action field (as the registry
    /// orders them), each pointing at its own rule.
    #[test]
    fn every_problem_points_at_its_rule() {
        let actions = FormActions::new([action()]);
        let json = json!({
            "title": "t",
            "questions": [{"key": "income", "text": "Income", "type": "number"}],
            "rules": [
                {"id": "r", "expression": "true", "constraint": ". > 0", "message": "m",
                 "question_keys": ["income"]},
                {"id": "s", "constraint": "regex(., '[')", "message": "m", "question_keys": ["income"]},
                {"id": "t", "expression": "nope > 1", "message": "m"},
                {"id": "t", "expression": "income > 1", "message": " "}
            ],
        });
        let problems = actions
            .build_version(&body(json), 1, 0)
            .expect_err("invalid");
        assert_eq!(
            pointers(&problems),
            [
                ("/rules/0", "expression_or_constraint"),
                ("/rules/1/constraint", "untranslatable_constraint"),
                ("/rules/2/expression", "unknown_question"),
                ("/rules/3/id", "duplicate_id"),
                ("/rules/3/message", "required"),
            ]
        );
        // The wrong shape is refused alone, as a body of the wrong shape is.
        let json = json!({"title": "t", "questions": [{"key": "a", "text": "A", "type": "text"}],
                          "rules": [{"id": "r", "message": "m", "cel": "true"}]});
        let problems = actions
            .build_version(&body(json), 1, 0)
            .expect_err("invalid");
        assert_eq!(pointers(&problems), [("/rules/0/cel", "invalid_shape")]);
    }
}
