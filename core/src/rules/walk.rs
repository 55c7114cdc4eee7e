//! One pass over an expression's syntax tree, at compile time.
//!
//! Invariant: after the walk, every identifier that is not a comprehension variable names a
//! question of the form, and integer literals in arithmetic next to answers are doubles.

use std::collections::HashMap;

use cel::common::ast::{EntryExpr, Expr, IdedExpr, LiteralValue, operators};
use cel::common::types::CelDouble;
use formstream_schemas::{Question, QuestionType};

use super::HAS_ANSWER;
use super::compile::Found;

/// One pass over an expression's syntax tree: finds the questions it names (not counting
/// comprehension variables), checks `has_answer` calls and cheap type mismatches against literals,
/// and reads integer literals next to answers in arithmetic as doubles.
pub(super) struct Walk<'q> {
    pub(super) questions: &'q HashMap<&'q str, &'q Question>,
    /// Variables of the enclosing comprehensions (`x` in `langs.exists(x, ...)`).
    pub(super) bound: Vec<String>,
    /// The questions the expression names, in order of first mention.
    pub(super) needs: Vec<String>,
    /// What is wrong with the expression: (code, detail).
    pub(super) found: Found,
}

impl Walk<'_> {
    pub(super) fn visit(&mut self, node: &mut IdedExpr) {
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
