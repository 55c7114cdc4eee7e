//! The shape of a form's spreadsheet: which column holds what, the header row, and the row of one
//! response revision.
//!
//! Invariant: the columns of a form only ever grow at the end. They are a pure function of the
//! form's version history (every question key in the order it first appeared, version after
//! version), so every instance, before or after a restart, puts a question in the same column
//! without reading the header back, and a question removed from a later version keeps its column.

use formstream_core::time::rfc3339;
use formstream_schemas::{Answer, Choice, Form, QuestionType, Response};
use serde_json::Value;

/// The fixed columns before the questions; the first two are what the read-back needs.
pub const FIXED_HEADER: [&str; 4] = ["Response ID", "Revision", "Submitted at", "Collector"];

/// How the choices of a multiple-choice answer are joined in one cell: readable, and unlike a
/// comma it rarely appears inside a choice text.
pub const CHOICE_SEPARATOR: &str = "; ";

/// One question column.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub key: String,
    /// The question's text in the newest version that has it: the header cell.
    pub text: String,
    pub kind: QuestionType,
    /// The choices of every version that had the question, newest text first, so that an
    /// answer to an older version still shows a text.
    pub choices: Vec<Choice>,
}

/// The columns of one form.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    pub columns: Vec<Column>,
}

impl Layout {
    /// The layout of `form`, over all its versions (oldest first).
    pub fn of(form: &Form) -> Self {
        let mut columns: Vec<Column> = Vec::new();
        for version in &form.versions {
            for question in &version.questions {
                match columns.iter_mut().find(|c| c.key == question.key) {
                    Some(column) => {
                        column.text.clone_from(&question.text);
                        column.kind = question.kind;
                        let mut choices = question.choices.clone();
                        choices.extend(
                            column
                                .choices
                                .drain(..)
                                .filter(|old| !question.choices.iter().any(|c| c.key == old.key)),
                        );
                        column.choices = choices;
                    }
                    None => columns.push(Column {
                        key: question.key.clone(),
                        text: question.text.clone(),
                        kind: question.kind,
                        choices: question.choices.clone(),
                    }),
                }
            }
        }
        Layout { columns }
    }

    /// Cells per row.
    pub fn width(&self) -> usize {
        FIXED_HEADER.len() + self.columns.len()
    }

    /// The header row.
    pub fn header(&self) -> Vec<Value> {
        FIXED_HEADER
            .iter()
            .map(|h| Value::from(*h))
            .chain(self.columns.iter().map(|c| Value::from(c.text.as_str())))
            .collect()
    }

    /// The row of one response revision, `width()` cells (unanswered questions are empty
    /// strings, so that a correction that drops an answer clears its cell).
    pub fn row(&self, response: &Response) -> Vec<Value> {
        let mut row = Vec::with_capacity(self.width());
        row.push(Value::from(response.response_id.as_str()));
        row.push(Value::from(response.revision));
        row.push(Value::from(rfc3339(response.submitted_at)));
        row.push(Value::from(response.collector.id.as_str()));
        for column in &self.columns {
            row.push(match response.answer(&column.key) {
                Some(answer) => cell(column, answer),
                None => Value::from(""),
            });
        }
        row
    }
}

/// One answer as a cell: numbers as numbers (so that the spreadsheet can sum them), choices as
/// their texts, everything else as the text the gateway stored.
fn cell(column: &Column, answer: &Answer) -> Value {
    if column.kind.has_choices() && !answer.choices.is_empty() {
        let texts: Vec<&str> = answer
            .choices
            .iter()
            .map(|key| {
                column
                    .choices
                    .iter()
                    .find(|c| &c.key == key)
                    .map_or(key.as_str(), |c| c.text.as_str())
            })
            .collect();
        return Value::from(texts.join(CHOICE_SEPARATOR));
    }
    if column.kind == QuestionType::Number
        && let Some(number) = answer.number.and_then(serde_json::Number::from_f64)
    {
        return Value::Number(number);
    }
    Value::from(answer.text.clone().unwrap_or_default())
}

/// A cell as text (the CSV file, and a size estimate).
pub fn cell_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Bytes a row adds to a request body (JSON, with its brackets and commas): what the 2 MB bound
/// is measured against.
pub fn row_bytes(row: &[Value]) -> usize {
    2 + row
        .iter()
        .map(|v| match v {
            Value::String(s) => s.len() + 3 + s.chars().map(escape_bytes).sum::<usize>(),
            other => other.to_string().len() + 1,
        })
        .sum::<usize>()
}

/// Bytes JSON adds to escape `c` in a string: `\"`, `\\`, `\n` and the like one, other
/// control characters (`\u0001`) five.
fn escape_bytes(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 1,
        c if c < ' ' => 5,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use formstream_schemas::Question;
    use formstream_schemas::fixtures::{self, choice_answer, labelled_choices, number_answer};

    use super::*;

    fn question(key: &str, text: &str, kind: QuestionType, choices: &[(&str, &str)]) -> Question {
        Question {
            text: text.into(),
            choices: labelled_choices(choices),
            ..fixtures::question(key, kind)
        }
    }

    #[test]
    fn columns_grow_at_the_end_and_removed_questions_keep_theirs() {
        let form = fixtures::form(
            "o",
            "f",
            vec![
                fixtures::version(
                    1,
                    vec![
                        question("name", "Name", QuestionType::Text, &[]),
                        question("age", "Age", QuestionType::Number, &[]),
                    ],
                ),
                fixtures::version(
                    2,
                    vec![
                        question(
                            "langs",
                            "Languages",
                            QuestionType::MultipleChoice,
                            &[("hi", "Hindi"), ("ta", "Tamil")],
                        ),
                        question("name", "Full name", QuestionType::Text, &[]),
                    ],
                ),
            ],
        );
        let layout = Layout::of(&form);
        let keys: Vec<&str> = layout.columns.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(keys, ["name", "age", "langs"]);
        assert_eq!(
            layout.header(),
            [
                "Response ID",
                "Revision",
                "Submitted at",
                "Collector",
                "Full name",
                "Age",
                "Languages"
            ]
            .map(Value::from)
        );
        let response = Response {
            form_version: 2,
            revision: 1,
            ..fixtures::response(
                "f",
                "r1",
                vec![
                    choice_answer("langs", &["hi", "ta"]),
                    number_answer("age", 41.0),
                ],
            )
        };
        let row = layout.row(&response);
        assert_eq!(row.len(), layout.width());
        assert_eq!(row[0], "r1");
        assert_eq!(row[1], 1);
        assert_eq!(row[2], "1970-01-01T00:00:00Z");
        assert_eq!(row[4], "");
        assert_eq!(row[5], 41.0);
        assert_eq!(row[6], "Hindi; Tamil");
        assert_eq!(
            row_bytes(&row),
            serde_json::to_string(&row).unwrap().len() + 1
        );
        let escaped = vec![Value::from("a \"quote\", a \\, a line\nand a \u{1} bell")];
        assert_eq!(
            row_bytes(&escaped),
            serde_json::to_string(&escaped).unwrap().len() + 1
        );
    }
}
