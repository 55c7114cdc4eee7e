//! XLSForm constraints translated to CEL, for form designers coming from ODK and Kobo.
//!
//! Invariant: a constraint is translated only when every token has a clean CEL counterpart;
//! anything else is refused with the reason, never guessed at.

use formstream_schemas::{Question, QuestionType};

use super::MAX_EXPRESSION_CHARS;

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
