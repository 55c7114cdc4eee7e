//! The receipts processor's form action, `"receipt": {"phone_question": ..., "template": ...}`
//! (a top-level field of a form; the wire record's `receipt`): the SMS a form sends to the
//! respondent of each response, as a MiniJinja template over the answers and the form. The
//! gateway checks an action when the form is saved ([`action`]: [`check`]); the processor renders
//! it ([`render`]). Both live here so that a template the gateway accepted is exactly a template
//! the processor can render.
//!
//! Invariant: an action stored on a form names a `phone` question of the same version, and its
//! template parses, names only the variables below (and, under `answers`, only questions of the
//! form), and renders on a sample response. Rendering is a pure function of the form version, the
//! response and the receipt reference, so every retry of one receipt carries the same text.
//!
//! Variables: `answers.<question_key>` (the answer as given: text, phone in E.164, a number as
//! submitted, a single choice's text, a multiple choice's texts as a list; undefined, so empty,
//! when unanswered), `form.id`, `form.title`, `form.version`, `response.id`, `response.revision`,
//! and `receipt_ref`, the reference the processor reconciles on.

use std::collections::BTreeMap;
use std::sync::Arc;

use formstream_core::forms::{Action, FormAction, FormBody};
use formstream_core::problem::FieldProblem;
use formstream_schemas::{FormVersion, Question, QuestionType, ReceiptAction, Response};
use minijinja::{Environment, Value, context};
use serde::{Deserialize, Serialize};

/// The action's name: the form's top-level field.
pub const NAME: &str = "receipt";

/// Twilio's hard limit on a message body: a template longer than that cannot produce a message.
pub const MAX_TEMPLATE_CHARS: usize = 1_600;
/// The variable holding the receipt reference.
pub const RECEIPT_REF: &str = "receipt_ref";
/// Work a render may do (MiniJinja instructions): far above any receipt (a few dozen), far below
/// what would let a `{% for %}` over a large range hold a processor's thread for long.
const FUEL: u64 = 50_000;

/// Attributes of `form` and `response` a template may use.
const FORM_FIELDS: &[&str] = &["id", "title", "version"];
const RESPONSE_FIELDS: &[&str] = &["id", "revision"];

/// A receipt action as the forms API takes and shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiptBody {
    pub phone_question: String,
    pub template: String,
}

/// The action, for the gateway's registry: stored in, and shown from, the record's `receipt`.
pub fn action() -> Arc<dyn FormAction> {
    Arc::new(Action::field(NAME, check_body, store, show))
}

fn check_body(body: &ReceiptBody, form: &FormBody) -> Vec<FieldProblem> {
    let questions: Vec<Question> = form.questions.iter().map(Question::from).collect();
    check(body, &questions)
}

fn store(body: ReceiptBody, version: &mut FormVersion) {
    version.receipt = Some(ReceiptAction {
        phone_question: body.phone_question,
        template: body.template,
    });
}

fn show(version: &FormVersion) -> Option<ReceiptBody> {
    let action = version.receipt.as_ref()?;
    Some(ReceiptBody {
        phone_question: action.phone_question.clone(),
        template: action.template.clone(),
    })
}

/// The one environment every template is compiled and rendered in: plain text (no HTML
/// escaping, this is an SMS), lenient undefined (an unanswered question renders empty), and
/// bounded work.
fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env.set_fuel(Some(FUEL));
    env
}

/// The problems of a receipt action (`body`) for a form with `questions`, each with a pointer
/// relative to the action (`/template`); none when it is valid.
pub fn check(body: &ReceiptBody, questions: &[Question]) -> Vec<FieldProblem> {
    let mut problems = Vec::new();
    match questions.iter().find(|q| q.key == body.phone_question) {
        None => problems.push(FieldProblem::new(
            "/phone_question",
            "unknown_question",
            format!("{:?} is not a question of the form", body.phone_question),
        )),
        Some(q) if q.kind != QuestionType::Phone => problems.push(FieldProblem::new(
            "/phone_question",
            "not_a_phone_question",
            format!("{:?} is not a phone question", body.phone_question),
        )),
        Some(_) => {}
    }
    problems.extend(template_problems(&body.template, questions));
    problems
}

/// What is wrong with `template` for a form with `questions`.
fn template_problems(template: &str, questions: &[Question]) -> Vec<FieldProblem> {
    const AT: &str = "/template";
    if template.trim().is_empty() {
        return vec![FieldProblem::new(
            AT,
            "required",
            "a receipt needs a template",
        )];
    }
    if template.chars().count() > MAX_TEMPLATE_CHARS {
        return vec![FieldProblem::new(
            AT,
            "too_long",
            format!("at most {MAX_TEMPLATE_CHARS} characters (Twilio's limit for one message)"),
        )];
    }
    let env = environment();
    let compiled = match env.template_from_str(template) {
        Ok(compiled) => compiled,
        Err(error) => {
            return vec![FieldProblem::new(AT, "template_syntax", describe(&error))];
        }
    };
    let globals: Vec<&str> = env.globals().map(|(name, _)| name).collect();
    let mut names: Vec<String> = compiled.undeclared_variables(true).into_iter().collect();
    // Sorted, so that several problems are always listed in the same order.
    names.sort();
    let mut problems = Vec::new();
    for name in names {
        let (root, attribute) = match name.split_once('.') {
            Some((root, attribute)) => (root, Some(attribute)),
            None => (name.as_str(), None),
        };
        let known = match (root, attribute) {
            ("answers", Some(key)) => {
                if questions.iter().all(|q| q.key != key) {
                    problems.push(FieldProblem::new(
                        AT,
                        "unknown_question",
                        format!("answers.{key}: {key:?} is not a question of the form"),
                    ));
                }
                true
            }
            ("answers" | "form" | "response" | RECEIPT_REF, None) => true,
            ("form", Some(field)) => FORM_FIELDS.contains(&field),
            ("response", Some(field)) => RESPONSE_FIELDS.contains(&field),
            (other, _) => globals.contains(&other),
        };
        if !known {
            problems.push(FieldProblem::new(
                AT,
                "unknown_variable",
                format!(
                    "{name} is not a receipt variable (answers.<question key>, form.id, form.title, form.version, response.id, response.revision, {RECEIPT_REF})"
                ),
            ));
        }
    }
    if problems.is_empty() {
        // Runtime errors (an unknown filter, a type error) show on a sample: every question
        // answered with a placeholder of its type.
        let answers: BTreeMap<&str, Value> = questions
            .iter()
            .map(|q| (q.key.as_str(), sample_answer(q)))
            .collect();
        let sample = context! {
            answers => answers,
            form => context! { id => "form", title => "Title", version => 1 },
            response => context! { id => "00000000-0000-0000-0000-000000000000", revision => 0 },
            receipt_ref => "RC0000000000",
        };
        if let Err(error) = compiled.render(sample) {
            problems.push(FieldProblem::new(AT, "template_error", describe(&error)));
        }
    }
    problems
}

fn sample_answer(question: &Question) -> Value {
    match question.kind {
        QuestionType::Number => Value::from("42"),
        QuestionType::Phone => Value::from("+14155550100"),
        QuestionType::SingleChoice => Value::from(
            question
                .choices
                .first()
                .map_or_else(String::new, |c| c.text.clone()),
        ),
        QuestionType::MultipleChoice => {
            Value::from_iter(question.choices.iter().map(|c| Value::from(c.text.clone())))
        }
        QuestionType::Text => Value::from("text"),
    }
}

/// A MiniJinja error as one line a form designer can act on (with its line number).
fn describe(error: &minijinja::Error) -> String {
    let mut text = match error.detail() {
        Some(detail) => format!("{}: {detail}", error.kind()),
        None => error.kind().to_string(),
    };
    if let Some(line) = error.line() {
        text.push_str(&format!(" (line {line})"));
    }
    text
}

/// Renders the receipt of `response` (to `form`, version `version`) with `receipt_ref`. Outer
/// whitespace is trimmed. An error means the template cannot render this response (the form was
/// written around the gateway's checks, or a type error only this response triggers): permanent.
pub fn render(
    action: &ReceiptAction,
    form_id: &str,
    version: &FormVersion,
    response: &Response,
    receipt_ref: &str,
) -> Result<String, String> {
    let answers: BTreeMap<&str, Value> = response
        .answers
        .iter()
        .filter_map(|answer| {
            let question = version.question(&answer.question_key);
            let value = match question.map(|q| q.kind) {
                Some(QuestionType::SingleChoice | QuestionType::MultipleChoice) => {
                    let question = question?;
                    let texts: Vec<Value> = answer
                        .choices
                        .iter()
                        .map(|key| {
                            let text = question
                                .choices
                                .iter()
                                .find(|c| &c.key == key)
                                .map_or(key.as_str(), |c| c.text.as_str());
                            Value::from(text)
                        })
                        .collect();
                    if question.kind == QuestionType::SingleChoice {
                        texts.into_iter().next()?
                    } else {
                        Value::from(texts)
                    }
                }
                _ => Value::from(answer.text.clone()?),
            };
            Some((answer.question_key.as_str(), value))
        })
        .collect();
    let ctx = context! {
        answers => answers,
        form => context! { id => form_id, title => &version.title, version => version.version },
        response => context! { id => &response.response_id, revision => response.revision },
        receipt_ref => receipt_ref,
    };
    environment()
        .render_str(&action.template, ctx)
        .map(|text| text.trim().to_owned())
        .map_err(|error| describe(&error))
}

#[cfg(test)]
mod tests {
    use formstream_schemas::fixtures::{self, choice_answer, labelled_choices, text_answer};

    use super::*;

    fn questions() -> Vec<Question> {
        let cities = || labelled_choices(&[("pune", "Pune"), ("kolkata", "Kolkata")]);
        let question = fixtures::question;
        vec![
            question("name", QuestionType::Text),
            question("phone", QuestionType::Phone),
            Question {
                choices: cities(),
                ..question("city", QuestionType::SingleChoice)
            },
            Question {
                choices: cities(),
                ..question("visited", QuestionType::MultipleChoice)
            },
        ]
    }

    /// The action to store, or its problems with their pointers from the form's root.
    fn checked(phone: &str, template: &str) -> Result<ReceiptAction, Vec<(String, &'static str)>> {
        let body = ReceiptBody {
            phone_question: phone.into(),
            template: template.into(),
        };
        let problems = check(&body, &questions());
        if !problems.is_empty() {
            let at = |p: FieldProblem| (format!("/receipt{}", p.pointer), p.code);
            return Err(problems.into_iter().map(at).collect());
        }
        Ok(ReceiptAction {
            phone_question: body.phone_question,
            template: body.template,
        })
    }

    #[test]
    fn a_good_action_is_stored_and_renders() {
        let action = checked(
            "phone",
            "Thanks {{ answers.name }} ({{ answers.city }}; {{ answers.visited | join(', ') }}) for {{ form.title }} v{{ form.version }}. Ref {{ receipt_ref }}{{ answers.missing_is_fine_at_render }}",
        );
        // `missing_is_fine_at_render` is not a question: refused at save time.
        assert_eq!(
            action.unwrap_err(),
            vec![("/receipt/template".to_owned(), "unknown_question")]
        );
        let action = checked(
            "phone",
            "Thanks {{ answers.name }} ({{ answers.city }}; {{ answers.visited | join(', ') }}) for {{ form.title }} v{{ form.version }}. Ref {{ receipt_ref }}",
        )
        .unwrap();
        let version = FormVersion {
            title: "Household survey".into(),
            default_region: Some("IN".into()),
            receipt: Some(action.clone()),
            ..fixtures::version(3, questions())
        };
        let response = Response {
            form_version: 3,
            ..fixtures::response(
                "f",
                "r-1",
                vec![
                    text_answer("name", "Priya"),
                    choice_answer("city", &["pune"]),
                    choice_answer("visited", &["pune", "kolkata"]),
                ],
            )
        };
        let text = render(&action, "f", &version, &response, "RC0123456789").unwrap();
        assert_eq!(
            text,
            "Thanks Priya (Pune; Pune, Kolkata) for Household survey v3. Ref RC0123456789"
        );
        // Unanswered questions render empty, not as an error.
        let mut unanswered = response.clone();
        unanswered.answers.clear();
        let text = render(&action, "f", &version, &unanswered, "RC1").unwrap();
        assert_eq!(text, "Thanks  (; ) for Household survey v3. Ref RC1");
    }

    #[test]
    fn every_problem_has_its_pointer() {
        let problems = |phone: &str, template: &str| checked(phone, template).unwrap_err();
        assert_eq!(
            problems("nope", "{{ answers.name"),
            vec![
                ("/receipt/phone_question".to_owned(), "unknown_question"),
                ("/receipt/template".to_owned(), "template_syntax"),
            ]
        );
        assert_eq!(
            problems("name", "{{ answers.age }} {{ secret }} {{ form.owner }}"),
            vec![
                ("/receipt/phone_question".to_owned(), "not_a_phone_question"),
                ("/receipt/template".to_owned(), "unknown_question"),
                ("/receipt/template".to_owned(), "unknown_variable"),
                ("/receipt/template".to_owned(), "unknown_variable"),
            ]
        );
        assert_eq!(
            problems("phone", "{{ answers.name | no_such_filter }}"),
            vec![("/receipt/template".to_owned(), "template_error")]
        );
        assert_eq!(
            problems("phone", " "),
            vec![("/receipt/template".to_owned(), "required")]
        );
        assert_eq!(
            problems("phone", &"a".repeat(1601)),
            vec![("/receipt/template".to_owned(), "too_long")]
        );
        // Built-in globals, loops and the bare maps are fine.
        assert!(
            checked(
                "phone",
                "{% for k in range(2) %}{{ k }}{% endfor %}{{ answers['name'] }}"
            )
            .is_ok()
        );
    }

    #[test]
    fn a_syntax_error_says_where() {
        let body = ReceiptBody {
            phone_question: "phone".into(),
            template: "Hello\n{% if answers.name %}".into(),
        };
        let problems = check(&body, &questions());
        assert_eq!(problems.len(), 1);
        assert!(problems[0].detail.contains("line 2"), "{:?}", problems[0]);
    }

    #[test]
    fn runaway_templates_run_out_of_fuel() {
        let body = ReceiptBody {
            phone_question: "phone".into(),
            template:
                "{% for a in range(10000) %}{% for b in range(10000) %}x{% endfor %}{% endfor %}"
                    .into(),
        };
        let problems = check(&body, &questions());
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].code, "template_error");
    }

    /// Through the forms API's own builder: a receipt is stored with the version, shown back by
    /// the view (so a fetched form can be PUT back), and its problems are field problems.
    #[test]
    fn forms_store_show_and_refuse_receipts() {
        use formstream_core::forms::FormActions;
        let actions = FormActions::new([action()]);
        let build_version = |body: &FormBody, v, now| actions.build_version(body, v, now);
        let body = |receipt: serde_json::Value| -> FormBody {
            serde_json::from_value(serde_json::json!({
                "title": "Survey",
                "default_region": "IN",
                "questions": [
                    {"key": "name", "text": "Name", "type": "text"},
                    {"key": "phone", "text": "Mobile", "type": "phone"}
                ],
                "receipt": receipt
            }))
            .expect("a body")
        };
        let good = serde_json::json!({"phone_question": "phone", "template": "Thanks {{ answers.name }} {{ receipt_ref }}"});
        let version = build_version(&body(good.clone()), 1, 0).expect("valid");
        assert_eq!(
            version.receipt.as_ref().map(|r| r.phone_question.as_str()),
            Some("phone")
        );
        let (shown, rebuilt) = actions.shown_and_rebuilt(&version);
        assert_eq!(rebuilt.as_ref(), Ok(&version));
        assert_eq!(shown["receipt"], good);
        // A receipt of the wrong shape is refused alone, as a body of the wrong shape is.
        let problems = build_version(&body(serde_json::json!({"phone_question": 3})), 1, 0)
            .expect_err("invalid");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(
            (problems[0].pointer.as_str(), problems[0].code),
            ("/receipt/phone_question", "invalid_shape")
        );
        let problems = build_version(
            &body(serde_json::json!({"phone_question": "name", "template": "{{ answers.age }}"})),
            1,
            0,
        )
        .expect_err("invalid");
        let found: Vec<_> = problems
            .iter()
            .map(|p| (p.pointer.as_str(), p.code))
            .collect();
        assert_eq!(
            found,
            vec![
                ("/receipt/phone_question", "not_a_phone_question"),
                ("/receipt/template", "unknown_question")
            ]
        );
    }
}
