//! Builders of forms, questions, rules and responses for tests and benchmarks: the one place they
//! are written, instead of a hand-filled struct literal in every test file.
//!
//! Why here: the builders make nothing but the records of [`crate::model`], and every crate that
//! tests forms (core, the gateway's benches, the processors, the integration tests and the bench
//! crate) already depends on formstream-schemas. Living in the lowest crate keeps the dependency
//! direction as it is (no crate gains a dependency on a sibling to share test code) and pulls in
//! nothing heavier than the model: no Kafka, HTTP, CEL or templates. The module is compiled only
//! with the `fixtures` feature, which dev-dependencies, the tests crate and the bench crate turn on;
//! the binary never asks for it.
//!
//! Invariant: a builder fills what it is not given with the emptiest valid value (no rules, no
//! actions, `actions_json` `{}`, metadata `{}`, timestamps 0), so that a test states what it relies
//! on by naming those fields (`FormVersion { rules, ..version(1, questions) }`); answers are shaped
//! as the gateway stores them (`formstream_core::responses::validate`): a number keeps its text, a
//! choice answer its keys joined by commas as text.

use crate::model::{
    Answer, Choice, Collector, Form, FormVersion, Notify, Question, QuestionType, Response, Rule,
};

/// A question whose text is its key: optional, without choices or a length limit.
pub fn question(key: &str, kind: QuestionType) -> Question {
    Question {
        key: key.into(),
        text: key.into(),
        kind,
        required: false,
        choices: Vec::new(),
        max_length: None,
    }
}

/// A choice question (`kind` single or multiple) whose choices are `keys`, each shown as its key
/// in capitals.
pub fn choice_question(key: &str, kind: QuestionType, keys: &[&str]) -> Question {
    Question {
        choices: keys
            .iter()
            .map(|k| Choice {
                key: (*k).into(),
                text: k.to_uppercase(),
            })
            .collect(),
        ..question(key, kind)
    }
}

/// Choices from (key, text) pairs, for a test that reads the texts back.
pub fn labelled_choices(choices: &[(&str, &str)]) -> Vec<Choice> {
    choices
        .iter()
        .map(|(key, text)| Choice {
            key: (*key).into(),
            text: (*text).into(),
        })
        .collect()
}

/// Version `number` of a form titled "t" with `questions` and nothing else.
pub fn version(number: i32, questions: Vec<Question>) -> FormVersion {
    FormVersion {
        version: number,
        title: "t".into(),
        description: String::new(),
        default_region: None,
        questions,
        metadata_json: "{}".into(),
        rules: Vec::new(),
        notify: Notify::default(),
        receipt: None,
        slang: None,
        sheets: None,
        actions_json: "{}".into(),
        created_at: 0,
    }
}

/// Form `id` of `organisation` with `versions` (oldest first).
pub fn form(organisation: &str, id: &str, versions: Vec<FormVersion>) -> Form {
    Form {
        id: id.into(),
        organisation: organisation.into(),
        created_at: 0,
        versions,
    }
}

/// Rule `id` (CEL `expression` over `question_keys`) whose message is "`id` failed".
pub fn rule(id: &str, expression: &str, question_keys: &[&str]) -> Rule {
    Rule {
        id: id.into(),
        expression: expression.into(),
        constraint: None,
        message: format!("{id} failed"),
        question_keys: question_keys.iter().map(|k| (*k).into()).collect(),
    }
}

/// Revision 0 of response `response_id` by collector-1 of organisation acme to version 1 of
/// `form_id`, with `answers`.
pub fn response(form_id: &str, response_id: &str, answers: Vec<Answer>) -> Response {
    Response {
        response_id: response_id.into(),
        form_id: form_id.into(),
        form_version: 1,
        organisation: "acme".into(),
        revision: 0,
        submitted_at: 0,
        received_at: 0,
        collector: Collector {
            id: "collector-1".into(),
            phone: None,
        },
        answers,
        metadata_json: "{}".into(),
    }
}

/// The answer `text` to a text or phone question.
pub fn text_answer(key: &str, text: &str) -> Answer {
    Answer {
        question_key: key.into(),
        text: Some(text.into()),
        number: None,
        choices: Vec::new(),
    }
}

/// The answer `number` to a number question (its text as Rust writes the number).
pub fn number_answer(key: &str, number: f64) -> Answer {
    Answer {
        number: Some(number),
        ..text_answer(key, &number.to_string())
    }
}

/// The answer to a single- or multiple-choice question that chose `keys`.
pub fn choice_answer(key: &str, keys: &[&str]) -> Answer {
    Answer {
        choices: keys.iter().map(|k| (*k).into()).collect(),
        ..text_answer(key, &keys.join(","))
    }
}
