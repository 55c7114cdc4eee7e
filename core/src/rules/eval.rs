//! A compiled rule set, and its evaluation on one response.
//!
//! Invariant: evaluation never panics and never leaves a rule undecided: each rule passes, is
//! violated, or errs (and an error flags the response with a violation that says why).

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use cel::common::ast::IdedExpr;
use cel::common::types::{CelDouble, CelString};
use cel::common::value::{CowVal, Val};
use cel::context::VariableResolver;
use cel::{Context, FunctionContext, Value};
use formstream_schemas::{Answer, FormVersion, QuestionType, Response, Violation};

use super::{ENV, HAS_ANSWER};
use crate::problem::FieldProblem;

/// What one rule says about one response.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Outcome {
    /// True, or not applicable because a question it names is unanswered.
    Pass,
    /// The expression evaluated to false.
    Violated,
    /// The expression could not be evaluated on this response, or did not give a bool.
    Error(String),
}

/// The rules of one form version, parsed and checked once; evaluating them is then cheap enough
/// for the processor's hot loop (it caches one per (form id, version)).
#[derive(Debug)]
pub struct RuleSet {
    pub(super) rules: Vec<CompiledRule>,
    /// Question key -> type, to bind each answer as its CEL type.
    pub(super) kinds: HashMap<String, QuestionType>,
    /// Whether some rule's time can grow with the answers (see [`RuleSet::may_run_long`]).
    pub(super) grows: bool,
}

#[derive(Debug)]
pub(super) struct CompiledRule {
    pub(super) id: String,
    pub(super) message: String,
    pub(super) question_keys: Vec<String>,
    /// Normalised (integer literals in arithmetic next to answers are doubles).
    pub(super) expression: IdedExpr,
    /// The questions the expression names: all must be answered for the rule to apply.
    pub(super) needs: Vec<String>,
}

impl RuleSet {
    /// Checks and compiles the rules of `version`, reporting every problem found.
    pub fn compile(version: &FormVersion) -> Result<RuleSet, Vec<FieldProblem>> {
        super::compile::compile(&version.questions, &version.rules)
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether evaluating these rules can take longer as the answers grow: a comprehension, a
    /// `matches` or a `+` that may join strings or lists (all within the save-time budget, but
    /// with long answers still far slower than the microseconds of comparisons and arithmetic).
    /// The validate processor evaluates such rule sets off its async threads, with a deadline.
    pub fn may_run_long(&self) -> bool {
        self.grows
    }

    /// The violations of `response`, in rule order: empty when the response is clean.
    pub fn evaluate(&self, response: &Response) -> Vec<Violation> {
        let answers = Answers {
            kinds: &self.kinds,
            response,
        };
        let context = context(&answers);
        self.rules
            .iter()
            .filter_map(|rule| {
                let error = match rule.outcome(&context, &answers) {
                    Outcome::Pass => return None,
                    Outcome::Violated => None,
                    Outcome::Error(error) => Some(error),
                };
                Some(Violation {
                    rule_id: rule.id.clone(),
                    message: rule.message.clone(),
                    question_keys: rule.question_keys.clone(),
                    error,
                })
            })
            .collect()
    }
}

impl RuleSet {
    /// Every rule as a violation whose `error` is `error`: the outcome of a response whose
    /// evaluation could not finish (it ran past its deadline), flagged so that a person looks.
    pub fn unevaluated(&self, error: &str) -> Vec<Violation> {
        self.rules
            .iter()
            .map(|rule| Violation {
                rule_id: rule.id.clone(),
                message: rule.message.clone(),
                question_keys: rule.question_keys.clone(),
                error: Some(error.to_owned()),
            })
            .collect()
    }
}

impl CompiledRule {
    fn outcome(&self, context: &Context<'_, '_>, answers: &Answers<'_>) -> Outcome {
        if !self.needs.iter().all(|key| answers.is_answered(key)) {
            return Outcome::Pass;
        }
        // The interpreter is third-party code run on data from the network: a panic in it must
        // become this rule's error, not a crashed processor that redelivers the record forever.
        let result = catch_unwind(AssertUnwindSafe(|| {
            Value::resolve(&self.expression, context)
        }));
        match result {
            Ok(Ok(Value::Bool(true))) => Outcome::Pass,
            Ok(Ok(Value::Bool(false))) => Outcome::Violated,
            Ok(Ok(other)) => Outcome::Error(format!(
                "the rule gave {}, not true or false",
                type_name(&other)
            )),
            Ok(Err(error)) => Outcome::Error(error.to_string()),
            Err(_) => Outcome::Error("the rule's evaluation failed unexpectedly".to_owned()),
        }
    }
}

/// The evaluation context of one response: the standard library, `has_answer`, and the answers.
pub(super) fn context<'a>(answers: &'a Answers<'a>) -> Context<'a, 'a> {
    let mut context = Context::with_env(Arc::clone(&ENV));
    // `has_answer` is not a stdlib name, so registering it cannot conflict.
    let _ = context.add_function(HAS_ANSWER, |ftx: &FunctionContext, key: Arc<String>| {
        ftx.ptx.get_variable(key.as_str()).is_some()
    });
    context.set_variable_resolver(answers);
    context
}

/// Binds answers by question key, on demand: nothing is converted for questions a rule does not
/// read, and text is borrowed, not copied.
pub(super) struct Answers<'a> {
    pub(super) kinds: &'a HashMap<String, QuestionType>,
    pub(super) response: &'a Response,
}

impl Answers<'_> {
    fn is_answered(&self, key: &str) -> bool {
        match (self.kinds.get(key), self.response.answer(key)) {
            (Some(kind), Some(answer)) => bind(*kind, answer).is_some(),
            _ => false,
        }
    }
}

impl VariableResolver for Answers<'_> {
    fn resolve<'b>(&'b self, variable: &str) -> Option<CowVal<'b, 'b>> {
        let kind = self.kinds.get(variable)?;
        bind(*kind, self.response.answer(variable)?)
    }
}

/// The CEL value of an answer, or None when it has no value of its question's type (which the
/// gateway never publishes, and which then counts as unanswered).
fn bind(kind: QuestionType, answer: &Answer) -> Option<CowVal<'_, '_>> {
    match kind {
        QuestionType::Number => answer.number.map(|n| CowVal::owned(CelDouble::from(n))),
        QuestionType::Text | QuestionType::Phone => answer
            .text
            .as_deref()
            .map(|text| CowVal::owned(CelString::from(text))),
        QuestionType::SingleChoice => answer
            .choices
            .first()
            .or(answer.text.as_ref())
            .map(|key| CowVal::owned(CelString::from(key.as_str()))),
        QuestionType::MultipleChoice => {
            let list = Value::from(answer.choices.clone());
            Box::<dyn Val>::try_from(list).ok().map(CowVal::Owned)
        }
    }
}

pub(super) fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Int(_) | Value::UInt(_) => "an integer",
        Value::Float(_) => "a number",
        Value::String(_) => "a string",
        Value::List(_) => "a list",
        Value::Map(_) => "a map",
        Value::Null => "null",
        _ => "a value of another type",
    }
}
