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
//! Files: [`eval`] (a compiled rule set and its evaluation on a response), [`compile`] (the
//! checks a rule passes to be stored), [`walk`] (one pass over an expression's syntax tree),
//! [`budget`] (what a rule may cost), [`xlsform`] (XLSForm constraints translated to CEL).
//!
//! Invariant: [`RuleSet::compile`] accepts only rules that parse, name only questions of their form
//! version, stay within the budget (`rule_too_expensive` otherwise: nesting depth, literal sizes,
//! comprehensions only over a multiple-choice answer, estimated steps), and evaluate to a bool
//! without a type error on a plausible response; so a form with an invalid or unbounded rule is
//! never stored, and the processor's compile of a stored form succeeds.

mod budget;
mod compile;
mod eval;
mod walk;
mod xlsform;

#[cfg(test)]
mod tests;

use std::sync::{Arc, LazyLock};

use cel::Env;

pub use budget::{
    MAX_DEPTH, MAX_LITERAL_ENTRIES, MAX_LOOP_NESTING, MAX_REGEX_BYTES, MAX_STEPS, TOO_EXPENSIVE,
};
pub use eval::RuleSet;
pub use xlsform::translate_constraint;

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
pub(crate) static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| Arc::new(Env::stdlib()));
