//! Business rules of a form: CEL expressions over the answers, checked when a form is saved and
//! evaluated against every response by the validate processor. Both use this module, so a rule
//! means the same thing at save time and at run time.
//!
//! Semantics (docs/actions.md, "validate", says the same for form designers):
//! - Each answer is bound to its question key: a number answer is a CEL `double`, a text or phone
//!   answer a `string`, a single choice the chosen key (`string`), a multiple choice a `list` of
//!   chosen keys. Numbers therefore compare as numbers, never as text. Integer literals compare
//!   numerically with doubles (`monthly_savings <= 5000`), and in arithmetic (`+ - * /`) an integer
//!   literal is read as a double (`monthly_savings + 100`), because CEL has no mixed int/double
//!   arithmetic.
//! - A rule applies only when every question its expression names is answered; otherwise it passes,
//!   like an XLSForm constraint, which only runs on answered questions. `has_answer("key")` is true
//!   when that question is answered and does not count as naming it, so a rule can demand presence:
//!   `monthly_income > 0.0 ? has_answer("monthly_savings") : true`.
//! - Outcome per rule: pass (`true`), violated (`false`), or error (a runtime error or a result that
//!   is not a bool). An error flags the response with a violation whose `error` says why, so that a
//!   human looks at it; evaluation never panics and never leaves a response undecided.
//!
//! Invariant: [`RuleSet::compile`] accepts only rules that parse, name only questions of their form
//! version, and evaluate to a bool without a type error on a plausible response; so a form with an
//! invalid rule is never stored, and the processor's compile of a stored form succeeds.

use std::collections::{HashMap, HashSet};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, LazyLock};

use cel::common::ast::{EntryExpr, Expr, IdedExpr, LiteralValue, operators};
use cel::common::types::{CelDouble, CelString};
use cel::common::value::{CowVal, Val};
use cel::context::VariableResolver;
use cel::{Context, Env, ExecutionError, FunctionContext, Value};
use formstream_schemas::{Answer, FormVersion, Question, QuestionType, Response, Rule, Violation};

/// Most rules per form version: each costs evaluation time on every response.
pub const MAX_RULES: usize = 50;
/// Longest expression or constraint, in characters: long enough for any business rule a person
/// reads, short enough that parsing and evaluating stay cheap and shallow.
pub const MAX_EXPRESSION_CHARS: usize = 1_000;
/// Longest message: it is sent by SMS, among others.
pub const MAX_MESSAGE_CHARS: usize = 500;
/// The presence function; see the module header.
pub const HAS_ANSWER: &str = "has_answer";

/// The standard CEL library, built once: building it registers hundreds of overloads.
static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| Arc::new(Env::stdlib()));

/// One problem with one rule, located by a JSON pointer into the form body (`/rules/1/expression`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleProblem {
    pub pointer: String,
    pub code: &'static str,
    pub detail: String,
}

impl RuleProblem {
    fn new(pointer: impl Into<String>, code: &'static str, detail: impl Into<String>) -> Self {
        RuleProblem {
            pointer: pointer.into(),
            code,
            detail: detail.into(),
        }
    }
}

/// What one rule says about one response.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
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
    rules: Vec<CompiledRule>,
    /// Question key -> type, to bind each answer as its CEL type.
    kinds: HashMap<String, QuestionType>,
}

#[derive(Debug)]
struct CompiledRule {
    id: String,
    message: String,
    question_keys: Vec<String>,
    /// Normalised (integer literals in arithmetic next to answers are doubles).
    expression: IdedExpr,
    /// The questions the expression names: all must be answered for the rule to apply.
    needs: Vec<String>,
}

impl RuleSet {
    /// Checks and compiles the rules of `version`, reporting every problem found.
    pub fn compile(version: &FormVersion) -> Result<RuleSet, Vec<RuleProblem>> {
        compile(&version.questions, &version.rules)
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
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

    /// Every rule's outcome on `response`, by rule id: for tests and diagnostics.
    pub fn outcomes(&self, response: &Response) -> Vec<(&str, Outcome)> {
        let answers = Answers {
            kinds: &self.kinds,
            response,
        };
        let context = context(&answers);
        self.rules
            .iter()
            .map(|rule| (rule.id.as_str(), rule.outcome(&context, &answers)))
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
fn context<'a>(answers: &'a Answers<'a>) -> Context<'a, 'a> {
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
struct Answers<'a> {
    kinds: &'a HashMap<String, QuestionType>,
    response: &'a Response,
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

fn type_name(value: &Value) -> &'static str {
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

fn compile(questions: &[Question], rules: &[Rule]) -> Result<RuleSet, Vec<RuleProblem>> {
    let mut problems = Vec::new();
    if rules.len() > MAX_RULES {
        problems.push(RuleProblem::new(
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
    for (i, rule) in rules.iter().enumerate() {
        let at = |field: &str| format!("/rules/{i}/{field}");
        if !is_rule_id(&rule.id) {
            problems.push(RuleProblem::new(
                at("id"),
                "invalid_id",
                "rule ids are 1 to 64 lower-case letters, digits, '_' or '-'",
            ));
        } else if !ids.insert(rule.id.as_str()) {
            problems.push(RuleProblem::new(
                at("id"),
                "duplicate_id",
                format!("rule id {:?} is used twice", rule.id),
            ));
        }
        if rule.message.trim().is_empty() {
            problems.push(RuleProblem::new(
                at("message"),
                "required",
                "a rule needs a message for the data collector",
            ));
        } else if rule.message.chars().count() > MAX_MESSAGE_CHARS {
            problems.push(RuleProblem::new(
                at("message"),
                "too_long",
                format!("at most {MAX_MESSAGE_CHARS} characters"),
            ));
        }
        let mut listed = HashSet::new();
        for (j, key) in rule.question_keys.iter().enumerate() {
            if !by_key.contains_key(key.as_str()) {
                problems.push(RuleProblem::new(
                    at(&format!("question_keys/{j}")),
                    "unknown_question",
                    format!("the form has no question {key:?}"),
                ));
            } else if !listed.insert(key.as_str()) {
                problems.push(RuleProblem::new(
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
                    .map(|(code, detail)| RuleProblem::new(expression_at.clone(), code, detail)),
            ),
            Ok((expression, needs)) => {
                let rule = CompiledRule {
                    id: rule.id.clone(),
                    message: rule.message.clone(),
                    question_keys: rule.question_keys.clone(),
                    expression,
                    needs,
                };
                if let Some(detail) = implausible(&rule, &kinds, &sample) {
                    problems.push(RuleProblem::new(expression_at, "invalid_type", detail));
                }
                compiled.push(rule);
            }
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(RuleSet {
        rules: compiled,
        kinds,
    })
}

fn is_rule_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

type Found = Vec<(&'static str, String)>;

/// Parses and normalises one expression, and lists the questions it names.
fn compile_expression(
    source: &str,
    questions: &HashMap<&str, &Question>,
) -> Result<(IdedExpr, Vec<String>), Found> {
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
    Ok((expression, walk.needs))
}

/// One pass over an expression's syntax tree: finds the questions it names (not counting
/// comprehension variables), checks `has_answer` calls and cheap type mismatches against literals,
/// and reads integer literals next to answers in arithmetic as doubles.
struct Walk<'q> {
    questions: &'q HashMap<&'q str, &'q Question>,
    /// Variables of the enclosing comprehensions (`x` in `langs.exists(x, ...)`).
    bound: Vec<String>,
    needs: Vec<String>,
    found: Found,
}

impl Walk<'_> {
    fn visit(&mut self, node: &mut IdedExpr) {
        match &mut node.expr {
            Expr::Ident(name) => {
                if self.bound.iter().any(|b| b == name) {
                    return;
                }
                if self.questions.contains_key(name.as_str()) {
                    if !self.needs.contains(name) {
                        self.needs.push(name.clone());
                    }
                } else {
                    self.found.push((
                        "unknown_question",
                        format!("{name:?} is not a question of this form"),
                    ));
                }
            }
            Expr::Call(call) => {
                if call.func_name == HAS_ANSWER && call.target.is_none() {
                    match call.args.as_slice() {
                        [arg] => match string_literal(arg) {
                            Some(key) if self.questions.contains_key(key) => {}
                            Some(key) => self.found.push((
                                "unknown_question",
                                format!("has_answer({key:?}): not a question of this form"),
                            )),
                            None => self.found.push((
                                "invalid_expression",
                                "has_answer takes a question key as a string literal, e.g. has_answer(\"monthly_income\")".to_owned(),
                            )),
                        },
                        _ => self.found.push((
                            "invalid_expression",
                            "has_answer takes exactly one question key".to_owned(),
                        )),
                    }
                    return;
                }
                let name = call.func_name.as_str();
                if call.target.is_none() && call.args.len() == 2 {
                    if is_arithmetic(name) {
                        self.numbers_as_doubles(&mut call.args);
                    } else if is_comparison(name) || name == operators::IN {
                        self.check_literal_types(name, &call.args);
                    }
                }
                if let Some(target) = call.target.as_deref_mut() {
                    self.visit(target);
                }
                for arg in &mut call.args {
                    self.visit(arg);
                }
            }
            Expr::Comprehension(comprehension) => {
                self.visit(&mut comprehension.iter_range);
                self.visit(&mut comprehension.accu_init);
                let depth = self.bound.len();
                self.bound.push(comprehension.iter_var.clone());
                if let Some(second) = &comprehension.iter_var2 {
                    self.bound.push(second.clone());
                }
                self.bound.push(comprehension.accu_var.clone());
                self.visit(&mut comprehension.loop_cond);
                self.visit(&mut comprehension.loop_step);
                self.visit(&mut comprehension.result);
                self.bound.truncate(depth);
            }
            Expr::List(list) => {
                for element in &mut list.elements {
                    self.visit(element);
                }
            }
            Expr::Map(map) => {
                for entry in &mut map.entries {
                    match &mut entry.expr {
                        EntryExpr::MapEntry(entry) => {
                            self.visit(&mut entry.key);
                            self.visit(&mut entry.value);
                        }
                        EntryExpr::StructField(field) => self.visit(&mut field.value),
                    }
                }
            }
            Expr::Struct(s) => {
                for entry in &mut s.entries {
                    match &mut entry.expr {
                        EntryExpr::MapEntry(entry) => {
                            self.visit(&mut entry.key);
                            self.visit(&mut entry.value);
                        }
                        EntryExpr::StructField(field) => self.visit(&mut field.value),
                    }
                }
            }
            Expr::Select(select) => self.visit(&mut select.operand),
            Expr::Literal(_) | Expr::Unspecified => {}
        }
    }

    /// `monthly_savings + 100`: CEL has no double + int, and answers are doubles, so an integer
    /// literal in arithmetic is read as the double it denotes (in `(2 + 3) * x` too, so that the
    /// constant part does not become an int that cannot meet the answer).
    fn numbers_as_doubles(&self, args: &mut [IdedExpr]) {
        for arg in args.iter_mut().filter(|arg| is_int_literal(arg)) {
            int_to_double(arg);
        }
    }

    /// `monthly_income == "5000"` is never true and `city == "mumbai"` (not a choice) neither:
    /// both are mistakes worth a 422 rather than a rule that silently never fires.
    fn check_literal_types(&mut self, op: &str, args: &[IdedExpr]) {
        let (question, literal) = match (self.question_of(&args[0]), self.question_of(&args[1])) {
            (Some(q), None) => (q, &args[1]),
            (None, Some(q)) => (q, &args[0]),
            _ => return,
        };
        let Expr::Literal(literal) = &literal.expr else {
            return;
        };
        let key = &question.key;
        if op == operators::IN {
            if let (QuestionType::MultipleChoice, LiteralValue::String(choice)) =
                (question.kind, literal)
                && !question.choices.iter().any(|c| c.key == choice.inner())
            {
                self.found.push((
                    "unknown_choice",
                    format!("{:?} is not a choice of {key:?}", choice.inner()),
                ));
            }
            return;
        }
        let numeric = matches!(
            literal,
            LiteralValue::Int(_) | LiteralValue::UInt(_) | LiteralValue::Double(_)
        );
        match (question.kind, literal) {
            (QuestionType::Number, LiteralValue::String(_)) => self.found.push((
                "invalid_type",
                format!("{key:?} is a number question; compare it with a number, not a string"),
            )),
            (QuestionType::Text | QuestionType::Phone | QuestionType::SingleChoice, _)
                if numeric =>
            {
                self.found.push((
                    "invalid_type",
                    format!(
                        "{key:?} is answered with text; compare it with a string, not a number"
                    ),
                ))
            }
            (QuestionType::SingleChoice, LiteralValue::String(choice))
                if !question.choices.iter().any(|c| c.key == choice.inner()) =>
            {
                self.found.push((
                    "unknown_choice",
                    format!("{:?} is not a choice of {key:?}", choice.inner()),
                ))
            }
            (QuestionType::MultipleChoice, LiteralValue::String(_)) => self.found.push((
                "invalid_type",
                format!("{key:?} is a list of choices; test one with \"choice\" in {key}"),
            )),
            _ => {}
        }
    }

    fn question_of(&self, node: &IdedExpr) -> Option<&Question> {
        match &node.expr {
            Expr::Ident(name) if !self.bound.iter().any(|b| b == name) => {
                self.questions.get(name.as_str()).copied()
            }
            _ => None,
        }
    }
}

fn is_arithmetic(name: &str) -> bool {
    [
        operators::ADD,
        operators::SUBSTRACT,
        operators::MULTIPLY,
        operators::DIVIDE,
    ]
    .contains(&name)
}

fn is_comparison(name: &str) -> bool {
    [
        operators::EQUALS,
        operators::NOT_EQUALS,
        operators::LESS,
        operators::LESS_EQUALS,
        operators::GREATER,
        operators::GREATER_EQUALS,
    ]
    .contains(&name)
}

fn string_literal(node: &IdedExpr) -> Option<&str> {
    match &node.expr {
        Expr::Literal(LiteralValue::String(s)) => Some(s.inner()),
        _ => None,
    }
}

/// An integer literal, or a negated one (`-5` parses as `-_(5)`).
fn is_int_literal(node: &IdedExpr) -> bool {
    match &node.expr {
        Expr::Literal(LiteralValue::Int(_)) => true,
        Expr::Call(call) if call.func_name == operators::NEGATE && call.args.len() == 1 => {
            is_int_literal(&call.args[0])
        }
        _ => false,
    }
}

fn int_to_double(node: &mut IdedExpr) {
    match &mut node.expr {
        Expr::Literal(LiteralValue::Int(i)) => {
            let value = *i.inner() as f64;
            node.expr = Expr::Literal(LiteralValue::Double(CelDouble::from(value)));
        }
        Expr::Call(call) => {
            for arg in &mut call.args {
                int_to_double(arg);
            }
        }
        _ => {}
    }
}

/// A response answering every question with a value of its type, to try each rule on at save
/// time. Numbers are 1 (not 0) so that a division does not fail on the sample alone.
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
                QuestionType::MultipleChoice => (Some(first.clone()), None, vec![first]),
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

/// Translates an XLSForm `constraint` to CEL, or says why it has no clean translation.
///
/// `.` is the rule's first question (`first_key`), `${key}` a question; `and`, `or`, `not(...)`,
/// `=`, `!=`, `<`, `<=`, `>`, `>=`, `+`, `-`, `*`, `div`, parentheses, numbers and quoted strings
/// map one to one, and `selected(${key}, 'choice')` becomes `"choice" in key` (multiple choice) or
/// `key == "choice"` (single choice). Anything else (other XPath functions, paths, `mod`) is
/// refused rather than guessed at.
pub fn translate_constraint(
    constraint: &str,
    first_key: Option<&str>,
    questions: &[Question],
) -> Result<String, String> {
    if constraint.chars().count() > MAX_EXPRESSION_CHARS {
        return Err(format!("at most {MAX_EXPRESSION_CHARS} characters"));
    }
    let tokens = xls_tokens(constraint, first_key)?;
    let mut out: Vec<String> = Vec::with_capacity(tokens.len());
    let mut i = 0;
    while i < tokens.len() {
        match &tokens[i] {
            XlsToken::Name(name) if name == "selected" => {
                let (key, choice) = match tokens.get(i + 1..i + 6) {
                    Some(
                        [
                            XlsToken::Punct("("),
                            XlsToken::Ref(key),
                            XlsToken::Punct(","),
                            XlsToken::Str(choice),
                            XlsToken::Punct(")"),
                        ],
                    ) => (key, choice),
                    _ => {
                        return Err(
                            "selected() is translated only as selected(${question}, 'choice')"
                                .to_owned(),
                        );
                    }
                };
                let kind = questions.iter().find(|q| &q.key == key).map(|q| q.kind);
                out.push(match kind {
                    Some(QuestionType::MultipleChoice) => format!("({choice} in {key})"),
                    Some(QuestionType::SingleChoice) => format!("({key} == {choice})"),
                    _ => {
                        return Err(format!(
                            "selected() needs a choice question, and {key:?} is not one"
                        ));
                    }
                });
                i += 6;
                continue;
            }
            XlsToken::Name(name) => {
                let cel = match name.as_str() {
                    "and" => "&&",
                    "or" => "||",
                    "div" => "/",
                    "not" if matches!(tokens.get(i + 1), Some(XlsToken::Punct("("))) => "!",
                    "true" | "false"
                        if matches!(
                            tokens.get(i + 1..i + 3),
                            Some([XlsToken::Punct("("), XlsToken::Punct(")")])
                        ) =>
                    {
                        out.push(name.clone());
                        i += 3;
                        continue;
                    }
                    other => {
                        return Err(format!(
                            "{other:?} has no CEL counterpart here; write the rule as a CEL expression instead"
                        ));
                    }
                };
                out.push(cel.to_owned());
            }
            XlsToken::Ref(key) => out.push(key.clone()),
            XlsToken::Str(s) | XlsToken::Number(s) => out.push(s.clone()),
            XlsToken::Punct(p) => out.push(match *p {
                "=" => "==".to_owned(),
                other => other.to_owned(),
            }),
        }
        i += 1;
    }
    Ok(out.join(" "))
}

#[derive(Debug, Clone, PartialEq)]
enum XlsToken {
    /// A question: `.` or `${key}`.
    Ref(String),
    Name(String),
    Number(String),
    /// A quoted string, re-quoted for CEL.
    Str(String),
    Punct(&'static str),
}

fn xls_tokens(source: &str, first_key: Option<&str>) -> Result<Vec<XlsToken>, String> {
    let chars: Vec<char> = source.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        match c {
            c if c.is_whitespace() => i += 1,
            '$' if next == Some('{') => {
                let end = chars[i..]
                    .iter()
                    .position(|&c| c == '}')
                    .ok_or("a ${...} reference is not closed")?;
                let key: String = chars[i + 2..i + end].iter().collect();
                let valid = key.chars().next().is_some_and(|c| c.is_ascii_lowercase())
                    && key
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
                if !valid {
                    return Err(format!("${{{key}}} does not name a question key"));
                }
                tokens.push(XlsToken::Ref(key));
                i += end + 1;
            }
            '.' if !next.is_some_and(|n| n.is_ascii_digit()) => {
                let key = first_key
                    .ok_or("'.' stands for the rule's question: list it first in question_keys")?;
                tokens.push(XlsToken::Ref(key.to_owned()));
                i += 1;
            }
            c if c.is_ascii_digit() || c == '.' => {
                let len = chars[i..]
                    .iter()
                    .take_while(|c| c.is_ascii_digit() || **c == '.')
                    .count();
                tokens.push(XlsToken::Number(chars[i..i + len].iter().collect()));
                i += len;
            }
            '\'' | '"' => {
                let len = chars[i + 1..]
                    .iter()
                    .position(|&q| q == c)
                    .ok_or("a quoted string is not closed")?;
                let text: String = chars[i + 1..i + 1 + len].iter().collect();
                if text.contains('\\') {
                    return Err("backslashes in strings have no clean translation".to_owned());
                }
                // Re-quoted with the quote CEL then needs no escape for.
                tokens.push(XlsToken::Str(if text.contains('"') {
                    format!("'{text}'")
                } else {
                    format!("\"{text}\"")
                }));
                i += len + 2;
            }
            c if c.is_ascii_alphabetic() => {
                let len = chars[i..]
                    .iter()
                    .take_while(|c| c.is_ascii_alphanumeric() || **c == '_' || **c == '-')
                    .count();
                tokens.push(XlsToken::Name(chars[i..i + len].iter().collect()));
                i += len;
            }
            _ => {
                let two: String = chars[i..chars.len().min(i + 2)].iter().collect();
                let punct = ["!=", "<=", ">="]
                    .into_iter()
                    .find(|p| *p == two)
                    .or_else(|| {
                        ["=", "<", ">", "(", ")", ",", "+", "-", "*"]
                            .into_iter()
                            .find(|p| p.starts_with(c))
                    })
                    .ok_or_else(|| format!("{c:?} has no CEL counterpart here"))?;
                tokens.push(XlsToken::Punct(punct));
                i += punct.len();
            }
        }
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;
    use formstream_schemas::{Choice, Collector, Notify};

    fn question(key: &str, kind: QuestionType, choices: &[&str]) -> Question {
        Question {
            key: key.into(),
            text: key.into(),
            kind,
            required: false,
            choices: choices
                .iter()
                .map(|c| Choice {
                    key: (*c).into(),
                    text: c.to_uppercase(),
                })
                .collect(),
            max_length: None,
        }
    }

    fn form(rules: &[(&str, &str)]) -> FormVersion {
        FormVersion {
            version: 1,
            title: "t".into(),
            description: String::new(),
            default_region: None,
            questions: vec![
                question("monthly_income", QuestionType::Number, &[]),
                question("monthly_savings", QuestionType::Number, &[]),
                question("name", QuestionType::Text, &[]),
                question("city", QuestionType::SingleChoice, &["pune", "delhi"]),
                question("langs", QuestionType::MultipleChoice, &["hi", "mr", "en"]),
            ],
            metadata_json: "{}".into(),
            rules: rules
                .iter()
                .map(|(id, expression)| Rule {
                    id: (*id).into(),
                    expression: (*expression).into(),
                    constraint: None,
                    message: format!("{id} failed"),
                    question_keys: vec![],
                })
                .collect(),
            notify: Notify::default(),
            receipt: None,
            slang: None,
            sheets: None,
            created_at: 0,
        }
    }

    fn response(answers: &[(&str, serde_json::Value)]) -> Response {
        Response {
            response_id: "r".into(),
            form_id: "f".into(),
            form_version: 1,
            organisation: "o".into(),
            revision: 0,
            submitted_at: 0,
            received_at: 0,
            collector: Collector {
                id: "c".into(),
                phone: None,
            },
            answers: answers
                .iter()
                .map(|(key, value)| Answer {
                    question_key: (*key).into(),
                    text: value.as_str().map(Into::into),
                    number: value.as_f64(),
                    choices: match value {
                        serde_json::Value::Array(items) => items
                            .iter()
                            .filter_map(|i| i.as_str().map(Into::into))
                            .collect(),
                        serde_json::Value::String(s) if *key == "city" => vec![s.clone()],
                        _ => vec![],
                    },
                })
                .collect(),
            metadata_json: "{}".into(),
        }
    }

    fn outcome(expression: &str, answers: &[(&str, serde_json::Value)]) -> Outcome {
        let rules = RuleSet::compile(&form(&[("r", expression)])).expect("compiles");
        let mut outcomes = rules.outcomes(&response(answers));
        outcomes.remove(0).1
    }

    fn problems(expression: &str) -> Vec<(&'static str, String)> {
        RuleSet::compile(&form(&[("r", expression)]))
            .expect_err("invalid")
            .into_iter()
            .map(|p| (p.code, p.pointer))
            .collect()
    }

    use serde_json::json;

    #[test]
    fn numbers_compare_as_numbers_not_strings() {
        // The earlier attempts' bug: "9000" > "10000" as strings.
        let savings_le_income = "monthly_savings <= monthly_income";
        let answers = [
            ("monthly_income", json!(10000)),
            ("monthly_savings", json!(9000)),
        ];
        assert_eq!(outcome(savings_le_income, &answers), Outcome::Pass);
        let answers = [
            ("monthly_income", json!(9000)),
            ("monthly_savings", json!(10000)),
        ];
        assert_eq!(outcome(savings_le_income, &answers), Outcome::Violated);
    }

    #[test]
    fn int_literals_work_with_double_answers() {
        let savings = |n: f64| [("monthly_savings", json!(n))];
        assert_eq!(
            outcome("monthly_savings <= 5000", &savings(4999.5)),
            Outcome::Pass
        );
        assert_eq!(
            outcome("monthly_savings <= 5000", &savings(5000.5)),
            Outcome::Violated
        );
        assert_eq!(
            outcome("monthly_savings == 5000", &savings(5000.0)),
            Outcome::Pass
        );
        assert_eq!(
            outcome("5000 >= monthly_savings", &savings(6000.0)),
            Outcome::Violated
        );
        // Arithmetic: the literal is read as a double.
        assert_eq!(
            outcome("monthly_savings + 100 <= 200", &savings(100.0)),
            Outcome::Pass
        );
        assert_eq!(
            outcome("monthly_savings * 2 > 150", &savings(100.0)),
            Outcome::Pass
        );
        assert_eq!(
            outcome("monthly_savings - -50 == 150", &savings(100.0)),
            Outcome::Pass
        );
        assert_eq!(
            outcome("(2 + 3) * monthly_savings == 500", &savings(100.0)),
            Outcome::Pass
        );
    }

    #[test]
    fn a_rule_over_an_unanswered_question_does_not_apply() {
        let rule = "monthly_savings <= monthly_income";
        assert_eq!(
            outcome(rule, &[("monthly_savings", json!(10))]),
            Outcome::Pass
        );
        assert_eq!(outcome(rule, &[]), Outcome::Pass);
        // A comprehension variable is not a question: the rule still applies.
        assert_eq!(
            outcome(
                "langs.all(l, l != \"en\")",
                &[("langs", json!(["hi", "en"]))]
            ),
            Outcome::Violated
        );
    }

    #[test]
    fn has_answer_demands_presence() {
        let rule = "monthly_income > 0.0 ? has_answer(\"monthly_savings\") : true";
        assert_eq!(
            outcome(rule, &[("monthly_income", json!(100))]),
            Outcome::Violated
        );
        let both = [
            ("monthly_income", json!(100)),
            ("monthly_savings", json!(0)),
        ];
        assert_eq!(outcome(rule, &both), Outcome::Pass);
        assert_eq!(outcome("has_answer(\"name\")", &[]), Outcome::Violated);
    }

    #[test]
    fn text_and_choices() {
        assert_eq!(
            outcome("city == \"pune\"", &[("city", json!("pune"))]),
            Outcome::Pass
        );
        assert_eq!(
            outcome("\"mr\" in langs", &[("langs", json!(["hi", "mr"]))]),
            Outcome::Pass
        );
        assert_eq!(
            outcome("\"en\" in langs", &[("langs", json!(["hi"]))]),
            Outcome::Violated
        );
        assert_eq!(
            outcome("size(langs) <= 2", &[("langs", json!(["hi", "mr", "en"]))]),
            Outcome::Violated
        );
        assert_eq!(
            outcome("size(name) >= 2", &[("name", json!("Asha"))]),
            Outcome::Pass
        );
        assert_eq!(
            outcome("name.startsWith(\"A\")", &[("name", json!("Asha"))]),
            Outcome::Pass
        );
    }

    #[test]
    fn a_runtime_error_is_an_error_outcome_that_flags_with_the_error() {
        // Division by zero depends on the answers, so the rule is accepted at save time...
        let rules = RuleSet::compile(&form(&[
            ("ratio", "monthly_income / monthly_savings < 10.0"),
            ("index", "langs[2] == \"en\""),
            ("fine", "monthly_income >= 0"),
        ]))
        .expect("plausible rules compile");
        // ...and errors on a response where the divisor is 0 (a double division gives +inf, so
        // use an index out of range for the error and check the division is just a violation).
        let answered = response(&[
            ("monthly_income", json!(100)),
            ("monthly_savings", json!(0)),
            ("langs", json!(["hi"])),
        ]);
        let violations = rules.evaluate(&answered);
        assert_eq!(violations.len(), 2, "{violations:?}");
        assert_eq!(violations[0].rule_id, "ratio");
        assert_eq!(violations[0].error, None);
        assert_eq!(violations[0].message, "ratio failed");
        assert_eq!(violations[1].rule_id, "index");
        let error = violations[1].error.as_deref().expect("an error");
        assert!(error.contains("out of bounds"), "{error}");
    }

    #[test]
    fn a_non_bool_result_is_an_error_outcome() {
        // Accepted at save time because the sample answer gives a bool; this one does not.
        let rules = RuleSet::compile(&form(&[(
            "r",
            "monthly_income < 5.0 ? true : monthly_income",
        )]))
        .expect("compiles");
        let violations = rules.evaluate(&response(&[("monthly_income", json!(9))]));
        let error = violations[0].error.as_deref().expect("an error");
        assert!(error.contains("not true or false"), "{error}");
        assert!(
            rules
                .evaluate(&response(&[("monthly_income", json!(1))]))
                .is_empty()
        );
        // The sample response catches a rule that can only give a number.
        assert_eq!(
            problems("monthly_income > 5.0 ? true : monthly_income")[0].0,
            "invalid_type"
        );
    }

    #[test]
    fn a_wrongly_typed_answer_is_an_error_not_a_panic() {
        // A record that breaks the gateway's invariant (text for a number question) reads as
        // unanswered; a choice answer with a number literal is caught at save time instead.
        let rules = RuleSet::compile(&form(&[("r", "monthly_income > 1.0")])).expect("compiles");
        let mut odd = response(&[]);
        odd.answers.push(Answer {
            question_key: "monthly_income".into(),
            text: Some("lots".into()),
            number: None,
            choices: vec![],
        });
        assert!(rules.evaluate(&odd).is_empty());
    }

    #[test]
    fn invalid_expressions_are_rejected_with_reasons() {
        assert_eq!(
            problems("monthly_income <="),
            [("invalid_expression", "/rules/0/expression".to_owned())]
        );
        assert_eq!(
            problems("monthly_spend > 1"),
            [("unknown_question", "/rules/0/expression".to_owned())]
        );
        assert_eq!(
            problems("monthly_income"),
            [("invalid_type", "/rules/0/expression".to_owned())]
        );
        assert_eq!(problems("monthly_income == \"5000\"")[0].0, "invalid_type");
        assert_eq!(problems("monthly_income > \"5000\"")[0].0, "invalid_type");
        assert_eq!(problems("name > 5")[0].0, "invalid_type");
        assert_eq!(problems("city == \"mumbai\"")[0].0, "unknown_choice");
        assert_eq!(problems("\"fr\" in langs")[0].0, "unknown_choice");
        assert_eq!(problems("langs == \"hi\"")[0].0, "invalid_type");
        assert_eq!(problems("has_answer(name)")[0].0, "invalid_expression");
        assert_eq!(problems("has_answer(\"nope\")")[0].0, "unknown_question");
        assert_eq!(problems("nosuch(monthly_income)")[0].0, "invalid_type");
        assert_eq!(problems(" ")[0].0, "required");
        assert_eq!(problems(&"1 < 2 && ".repeat(200))[0].0, "too_long");
    }

    #[test]
    fn ids_keys_messages_and_limits_are_checked() {
        let mut version = form(&[("same", "true"), ("same", "true"), ("Bad Id", "true")]);
        version.rules[0].question_keys = vec![
            "monthly_income".into(),
            "nope".into(),
            "monthly_income".into(),
        ];
        version.rules[1].message = " ".into();
        let found: Vec<_> = RuleSet::compile(&version)
            .expect_err("invalid")
            .into_iter()
            .map(|p| (p.pointer, p.code))
            .collect();
        assert_eq!(
            found,
            [
                ("/rules/0/question_keys/1".to_owned(), "unknown_question"),
                ("/rules/0/question_keys/2".to_owned(), "duplicate_key"),
                ("/rules/1/id".to_owned(), "duplicate_id"),
                ("/rules/1/message".to_owned(), "required"),
                ("/rules/2/id".to_owned(), "invalid_id"),
            ]
        );
        let many: Vec<(String, &str)> =
            (0..=MAX_RULES).map(|i| (format!("r{i}"), "true")).collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(id, e)| (id.as_str(), *e)).collect();
        let found = RuleSet::compile(&form(&many)).expect_err("too many");
        assert_eq!(found[0].code, "too_many");
    }

    #[test]
    fn xlsform_constraints_that_map_cleanly_are_translated() {
        let questions = form(&[]).questions;
        let t = |c: &str| translate_constraint(c, Some("monthly_savings"), &questions);
        assert_eq!(
            t(". <= ${monthly_income}").as_deref(),
            Ok("monthly_savings <= monthly_income")
        );
        assert_eq!(
            t(". >= 0 and (. < 1000.5 or not(${name} = 'x'))").as_deref(),
            Ok("monthly_savings >= 0 && ( monthly_savings < 1000.5 || ! ( name == \"x\" ) )")
        );
        assert_eq!(
            t("selected(${langs}, 'hi')").as_deref(),
            Ok("(\"hi\" in langs)")
        );
        assert_eq!(
            t("selected(${city}, \"pune\") != true()").as_deref(),
            Ok("(city == \"pune\") != true")
        );
        assert_eq!(t(". div 2 < 10").as_deref(), Ok("monthly_savings / 2 < 10"));
        // The translation then means what the constraint meant, numbers as numbers.
        let mut version = form(&[]);
        version.rules.push(Rule {
            id: "xls".into(),
            expression: t(". <= ${monthly_income}").expect("translates"),
            constraint: Some(". <= ${monthly_income}".into()),
            message: "m".into(),
            question_keys: vec!["monthly_savings".into()],
        });
        let rules = RuleSet::compile(&version).expect("compiles");
        let flagged = response(&[
            ("monthly_income", json!(9000)),
            ("monthly_savings", json!(10000)),
        ]);
        assert_eq!(rules.outcomes(&flagged)[0].1, Outcome::Violated);
    }

    #[test]
    fn xlsform_constraints_that_do_not_map_are_refused() {
        let questions = form(&[]).questions;
        let t = |c: &str| translate_constraint(c, Some("monthly_savings"), &questions);
        for bad in [
            "regex(., '^[a-z]+$')",
            ". mod 2 = 0",
            "/data/monthly_income > 1",
            "count-selected(${langs}) > 1",
            "selected(${name}, 'x')",
            "selected(${langs})",
            "${Bad Key} > 1",
            ". > 'unterminated",
            "${monthly_income",
        ] {
            assert!(t(bad).is_err(), "{bad} should be refused");
        }
        assert!(
            translate_constraint(". > 1", None, &questions).is_err(),
            "'.' needs a question"
        );
    }

    #[test]
    fn a_rule_set_can_be_shared_across_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<RuleSet>();
    }
}
