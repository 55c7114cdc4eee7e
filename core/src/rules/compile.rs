//! Compiling the rules of a form version: every check a rule passes before it is stored, and the
//! compiled rule set the validate processor evaluates.
//!
//! Invariant: a rule set compiles only when every rule parses, names only questions of its form
//! version, and gives a bool without a type error on a plausible (sample) response.

use std::collections::{HashMap, HashSet};
use std::panic::{AssertUnwindSafe, catch_unwind};

use cel::common::ast::IdedExpr;
use cel::{ExecutionError, Value};
use formstream_schemas::{Answer, Question, QuestionType, Response, Rule};

use super::budget;
use super::eval::{Answers, CompiledRule, RuleSet, context, type_name};
use super::walk::Walk;
use super::{ENV, MAX_EXPRESSION_CHARS, MAX_MESSAGE_CHARS, MAX_RULES};
use crate::problem::FieldProblem;

pub(super) fn compile(
    questions: &[Question],
    rules: &[Rule],
) -> Result<RuleSet, Vec<FieldProblem>> {
    let mut problems = Vec::new();
    if rules.len() > MAX_RULES {
        problems.push(FieldProblem::new(
            "/rules",
            "too_many",
            format!("at most {MAX_RULES} rules"),
        ));
    }
    let by_key: HashMap<&str, &Question> = questions.iter().map(|q| (q.key.as_str(), q)).collect();
    let kinds: HashMap<String, QuestionType> =
        questions.iter().map(|q| (q.key.clone(), q.kind)).collect();
    let sample = sample_response(questions);
    let mut ids = HashSet::new();
    let mut compiled = Vec::with_capacity(rules.len());
    let mut grows = false;
    let mut steps: u64 = 0;
    for (i, rule) in rules.iter().enumerate() {
        let at = |field: &str| format!("/rules/{i}/{field}");
        if !is_rule_id(&rule.id) {
            problems.push(FieldProblem::new(
                at("id"),
                "invalid_id",
                "rule ids are 1 to 64 lower-case letters, digits, '_' or '-'",
            ));
        } else if !ids.insert(rule.id.as_str()) {
            problems.push(FieldProblem::new(
                at("id"),
                "duplicate_id",
                format!("rule id {:?} is used twice", rule.id),
            ));
        }
        if rule.message.trim().is_empty() {
            problems.push(FieldProblem::new(
                at("message"),
                "required",
                "a rule needs a message for the data collector",
            ));
        } else if rule.message.chars().count() > MAX_MESSAGE_CHARS {
            problems.push(FieldProblem::new(
                at("message"),
                "too_long",
                format!("at most {MAX_MESSAGE_CHARS} characters"),
            ));
        }
        let mut listed = HashSet::new();
        for (j, key) in rule.question_keys.iter().enumerate() {
            if !by_key.contains_key(key.as_str()) {
                problems.push(FieldProblem::new(
                    at(&format!("question_keys/{j}")),
                    "unknown_question",
                    format!("the form has no question {key:?}"),
                ));
            } else if !listed.insert(key.as_str()) {
                problems.push(FieldProblem::new(
                    at(&format!("question_keys/{j}")),
                    "duplicate_key",
                    format!("{key:?} is listed twice"),
                ));
            }
        }
        // A rule written as an XLSForm constraint is reported where the designer wrote it.
        let expression_at = at(if rule.constraint.is_some() {
            "constraint"
        } else {
            "expression"
        });
        match compile_expression(&rule.expression, &by_key) {
            Err(found) => problems.extend(
                found
                    .into_iter()
                    .map(|(code, detail)| FieldProblem::new(expression_at.clone(), code, detail)),
            ),
            Ok((expression, needs, cost)) => {
                grows |= cost.grows;
                steps = steps.saturating_add(cost.steps);
                let rule = CompiledRule {
                    id: rule.id.clone(),
                    message: rule.message.clone(),
                    question_keys: rule.question_keys.clone(),
                    expression,
                    needs,
                };
                if let Some(detail) = implausible(&rule, &kinds, &sample) {
                    problems.push(FieldProblem::new(expression_at, "invalid_type", detail));
                }
                compiled.push(rule);
            }
        }
    }
    if steps > budget::MAX_FORM_STEPS {
        problems.push(FieldProblem::new(
            "/rules",
            budget::TOO_EXPENSIVE,
            format!(
                "these rules together may take about {steps} evaluation steps per response, more \
                 than the {} a form's rules may take; range over fewer or smaller answers, or \
                 merge rules",
                budget::MAX_FORM_STEPS
            ),
        ));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(RuleSet {
        rules: compiled,
        kinds,
        grows,
    })
}

fn is_rule_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

pub(super) type Found = Vec<(&'static str, String)>;

/// Parses and normalises one expression, lists the questions it names, and checks its cost.
fn compile_expression(
    source: &str,
    questions: &HashMap<&str, &Question>,
) -> Result<(IdedExpr, Vec<String>, budget::Cost), Found> {
    if source.trim().is_empty() {
        return Err(vec![("required", "a rule needs an expression".to_owned())]);
    }
    if source.chars().count() > MAX_EXPRESSION_CHARS {
        return Err(vec![(
            "too_long",
            format!("at most {MAX_EXPRESSION_CHARS} characters"),
        )]);
    }
    // The parser is third-party code fed user input; a panic in it is a parse error here.
    let parsed = catch_unwind(|| ENV.parser().parse(source));
    let mut expression = match parsed {
        Ok(Ok(expression)) => expression,
        Ok(Err(errors)) => {
            return Err(vec![(
                "invalid_expression",
                format!("not a valid CEL expression: {}", errors.to_string().trim()),
            )]);
        }
        Err(_) => {
            return Err(vec![(
                "invalid_expression",
                "not a valid CEL expression".to_owned(),
            )]);
        }
    };
    let mut walk = Walk {
        questions,
        bound: Vec::new(),
        needs: Vec::new(),
        found: Vec::new(),
    };
    walk.visit(&mut expression);
    if !walk.found.is_empty() {
        return Err(walk.found);
    }
    let cost = budget::check(&expression, questions)?;
    Ok((expression, walk.needs, cost))
}

/// A response answering every question with a value of its type, to try each rule on at save
/// time. Numbers are 1 (not 0) so that a division does not fail on the sample alone; a multiple
/// choice holds every choice, the longest list a comprehension can meet.
fn sample_response(questions: &[Question]) -> Response {
    let answers = questions
        .iter()
        .map(|q| {
            let first = q.choices.first().map(|c| c.key.clone()).unwrap_or_default();
            let (text, number, choices) = match q.kind {
                QuestionType::Number => (None, Some(1.0), vec![]),
                QuestionType::Text => (Some("text".to_owned()), None, vec![]),
                QuestionType::Phone => (Some("+15550100000".to_owned()), None, vec![]),
                QuestionType::SingleChoice => (Some(first.clone()), None, vec![first]),
                QuestionType::MultipleChoice => (
                    Some(first),
                    None,
                    q.choices.iter().map(|c| c.key.clone()).collect(),
                ),
            };
            Answer {
                question_key: q.key.clone(),
                text,
                number,
                choices,
            }
        })
        .collect();
    Response {
        response_id: String::new(),
        form_id: String::new(),
        form_version: 0,
        organisation: String::new(),
        revision: 0,
        submitted_at: 0,
        received_at: 0,
        collector: formstream_schemas::Collector {
            id: String::new(),
            phone: None,
        },
        answers,
        metadata_json: "{}".to_owned(),
    }
}

/// Why a rule cannot be right, judged by evaluating it on a sample response: a result that is not
/// a bool, or an error that no answer could avoid (a type error, an unknown function). Errors that
/// depend on the answers (division by zero, an index out of range) are not held against it.
fn implausible(
    rule: &CompiledRule,
    kinds: &HashMap<String, QuestionType>,
    sample: &Response,
) -> Option<String> {
    let answers = Answers {
        kinds,
        response: sample,
    };
    let context = context(&answers);
    let result = catch_unwind(AssertUnwindSafe(|| {
        Value::resolve(&rule.expression, &context)
    }));
    match result {
        Ok(Ok(Value::Bool(_))) => None,
        Ok(Ok(other)) => Some(format!(
            "a rule must give true or false, and this one gives {}",
            type_name(&other)
        )),
        Ok(Err(
            ExecutionError::DivisionByZero(_)
            | ExecutionError::RemainderByZero(_)
            | ExecutionError::Overflow(..)
            | ExecutionError::IndexOutOfBounds(_)
            | ExecutionError::NoSuchKey(_)
            | ExecutionError::FunctionError { .. },
        )) => None,
        Ok(Err(error)) => Some(format!("this rule cannot be evaluated: {error}")),
        Err(_) => Some("this rule cannot be evaluated".to_owned()),
    }
}
