//! A rule's cost, bounded before it is stored: one read-only pass over its syntax tree that
//! refuses what could make one response's evaluation arbitrarily long, and tells whether the
//! rule's time can still grow with the answers (then the validate processor evaluates it off the
//! async threads, with a deadline).
//!
//! Invariant: a rule that passes has a syntax tree at most [`MAX_DEPTH`] deep, list and map
//! literals of at most [`MAX_LITERAL_ENTRIES`] entries, comprehensions (`all`, `exists`,
//! `exists_one`, `map`, `filter`) only over a multiple-choice answer and at most
//! [`MAX_LOOP_NESTING`] deep, `matches` only with a literal pattern that compiles within
//! [`MAX_REGEX_BYTES`], and an estimated [`MAX_STEPS`] evaluation steps or fewer on any response;
//! a form version's rules together take [`MAX_FORM_STEPS`] or fewer.

use std::collections::HashMap;

use cel::common::ast::{EntryExpr, Expr, IdedExpr, LiteralValue, operators};
use formstream_schemas::{Question, QuestionType};

use super::compile::Found;

/// Deepest syntax tree: nested calls and parentheses beyond this are no business rule.
pub const MAX_DEPTH: usize = 32;
/// Most entries of one list or map literal (`city in ["pune", ...]` reads fine up to this).
pub const MAX_LITERAL_ENTRIES: usize = 64;
/// Most comprehensions nested in one another: each level multiplies the work by a list's size.
pub const MAX_LOOP_NESTING: usize = 2;
/// Most evaluation steps one rule may take on the largest response its form admits (each
/// comprehension counted as its body times the choices of the answer it ranges over): tens of
/// microseconds of interpreter time.
pub const MAX_STEPS: u64 = 20_000;
/// Most evaluation steps all the rules of a form version may take together on one response: five
/// rules at [`MAX_STEPS`], so that fifty rules each just within it cannot add up to fifty times
/// one rule's time.
pub const MAX_FORM_STEPS: u64 = 5 * MAX_STEPS;
/// Largest compiled `matches` pattern; the interpreter compiles it again on every evaluation.
pub const MAX_REGEX_BYTES: usize = 256 * 1024;

/// The code of every problem found here.
pub const TOO_EXPENSIVE: &str = "rule_too_expensive";

/// What the budget pass found out about one expression.
pub(super) struct Cost {
    /// Whether its time can grow with the answers beyond the size of its syntax tree: it has a
    /// comprehension, a `matches`, or a `+` that may join strings or lists.
    pub(super) grows: bool,
    /// Its estimated evaluation steps on the largest response its form admits.
    pub(super) steps: u64,
}

/// Checks `expression` (already walked: every free identifier names a question) against the
/// budget.
pub(super) fn check(
    expression: &IdedExpr,
    questions: &HashMap<&str, &Question>,
) -> Result<Cost, Found> {
    let mut pass = Pass {
        questions,
        bound: Vec::new(),
        loops: 0,
        grows: false,
        found: Vec::new(),
    };
    let steps = pass.steps(expression, 1);
    if pass.found.is_empty() && steps > MAX_STEPS {
        pass.found.push((
            TOO_EXPENSIVE,
            format!(
                "this rule may take about {steps} evaluation steps per response, more than the {MAX_STEPS} allowed; range over fewer or smaller answers"
            ),
        ));
    }
    if pass.found.is_empty() {
        Ok(Cost {
            grows: pass.grows,
            steps,
        })
    } else {
        pass.found.dedup();
        Err(pass.found)
    }
}

struct Pass<'q> {
    questions: &'q HashMap<&'q str, &'q Question>,
    /// Variables of the enclosing comprehensions.
    bound: Vec<String>,
    /// Comprehensions enclosing the node being read.
    loops: usize,
    grows: bool,
    found: Found,
}

impl Pass<'_> {
    /// The estimated steps of evaluating `node` once, at `depth` in the tree.
    fn steps(&mut self, node: &IdedExpr, depth: usize) -> u64 {
        if depth > MAX_DEPTH {
            self.found.push((
                TOO_EXPENSIVE,
                format!("expressions may nest at most {MAX_DEPTH} deep"),
            ));
            return 0;
        }
        let inner = depth + 1;
        match &node.expr {
            Expr::Literal(_) | Expr::Ident(_) | Expr::Unspecified => 1,
            Expr::Select(select) => 1 + self.steps(&select.operand, inner),
            Expr::Call(call) => {
                let name = call.func_name.as_str();
                if name == "matches" {
                    self.grows = true;
                    // `text.matches("re")` or `matches(text, "re")`: the pattern is the last argument.
                    self.check_pattern(call.args.last());
                } else if name == operators::ADD && !call.args.iter().all(|arg| self.is_number(arg))
                {
                    self.grows = true;
                }
                let mut steps = 1;
                if let Some(target) = call.target.as_deref() {
                    steps += self.steps(target, inner);
                }
                for arg in &call.args {
                    steps += self.steps(arg, inner);
                }
                steps
            }
            Expr::List(list) => {
                self.check_entries(list.elements.len());
                1 + list
                    .elements
                    .iter()
                    .map(|e| self.steps(e, inner))
                    .sum::<u64>()
            }
            Expr::Map(map) => {
                self.check_entries(map.entries.len());
                1 + self.entries(&map.entries, inner)
            }
            Expr::Struct(s) => {
                self.check_entries(s.entries.len());
                1 + self.entries(&s.entries, inner)
            }
            Expr::Comprehension(comprehension) => {
                self.grows = true;
                let size = self.range_size(&comprehension.iter_range);
                if self.loops >= MAX_LOOP_NESTING {
                    self.found.push((
                        TOO_EXPENSIVE,
                        format!(
                            "all, exists, exists_one, map and filter may nest at most {MAX_LOOP_NESTING} deep"
                        ),
                    ));
                }
                let before = self.steps(&comprehension.iter_range, inner)
                    + self.steps(&comprehension.accu_init, inner);
                let depth_of_bound = self.bound.len();
                self.bound.push(comprehension.iter_var.clone());
                if let Some(second) = &comprehension.iter_var2 {
                    self.bound.push(second.clone());
                }
                self.bound.push(comprehension.accu_var.clone());
                self.loops += 1;
                let body = self.steps(&comprehension.loop_cond, inner)
                    + self.steps(&comprehension.loop_step, inner);
                self.loops -= 1;
                let result = self.steps(&comprehension.result, inner);
                self.bound.truncate(depth_of_bound);
                before
                    .saturating_add(size.saturating_mul(body))
                    .saturating_add(result)
            }
        }
    }

    fn entries(&mut self, entries: &[cel::common::ast::IdedEntryExpr], depth: usize) -> u64 {
        let mut steps = 0;
        for entry in entries {
            steps += match &entry.expr {
                EntryExpr::MapEntry(entry) => {
                    self.steps(&entry.key, depth) + self.steps(&entry.value, depth)
                }
                EntryExpr::StructField(field) => self.steps(&field.value, depth),
            };
        }
        steps
    }

    fn check_entries(&mut self, entries: usize) {
        if entries > MAX_LITERAL_ENTRIES {
            self.found.push((
                TOO_EXPENSIVE,
                format!("a list or map literal may have at most {MAX_LITERAL_ENTRIES} entries"),
            ));
        }
    }

    /// The most items a comprehension's range can hold: the choices of the multiple-choice
    /// question it names. Any other range is refused (its size is not bounded by the form).
    fn range_size(&mut self, range: &IdedExpr) -> u64 {
        if let Some(question) = self.question(range)
            && question.kind == QuestionType::MultipleChoice
        {
            return question.choices.len().max(1) as u64;
        }
        self.found.push((
            TOO_EXPENSIVE,
            "all, exists, exists_one, map and filter may only range over a multiple-choice answer, e.g. langs.exists(l, l == \"en\")".to_owned(),
        ));
        1
    }

    fn check_pattern(&mut self, pattern: Option<&IdedExpr>) {
        let Some(Expr::Literal(LiteralValue::String(pattern))) = pattern.map(|p| &p.expr) else {
            self.found.push((
                TOO_EXPENSIVE,
                "matches takes its pattern as a string literal".to_owned(),
            ));
            return;
        };
        let compiled = regex::RegexBuilder::new(pattern.inner())
            .size_limit(MAX_REGEX_BYTES)
            .build();
        if let Err(error) = compiled {
            let detail = match error {
                regex::Error::CompiledTooBig(_) => format!(
                    "this pattern compiles to more than {MAX_REGEX_BYTES} bytes; use a simpler one"
                ),
                other => format!("not a valid pattern: {other}"),
            };
            self.found.push((TOO_EXPENSIVE, detail));
        }
    }

    /// The question an identifier names, unless a comprehension variable shadows it.
    fn question(&self, node: &IdedExpr) -> Option<&Question> {
        match &node.expr {
            Expr::Ident(name) if !self.bound.iter().any(|b| b == name) => {
                self.questions.get(name.as_str()).copied()
            }
            _ => None,
        }
    }

    /// Whether `node` is surely a number: a numeric literal, a number answer, or arithmetic or a
    /// negation of those. (`+` on anything else may join strings or lists.)
    fn is_number(&self, node: &IdedExpr) -> bool {
        match &node.expr {
            Expr::Literal(
                LiteralValue::Int(_) | LiteralValue::UInt(_) | LiteralValue::Double(_),
            ) => true,
            Expr::Ident(_) => self
                .question(node)
                .is_some_and(|q| q.kind == QuestionType::Number),
            Expr::Call(call) if call.target.is_none() => {
                [
                    operators::ADD,
                    operators::SUBSTRACT,
                    operators::MULTIPLY,
                    operators::DIVIDE,
                    operators::MODULO,
                    operators::NEGATE,
                ]
                .contains(&call.func_name.as_str())
                    && call.args.iter().all(|arg| self.is_number(arg))
            }
            _ => false,
        }
    }
}
