//! The rules module's tests: evaluation semantics, save-time checks and XLSForm translation.

use formstream_schemas::fixtures::{self, choice_question, question};
use formstream_schemas::{Answer, FormVersion, QuestionType, Response, Rule, Violation};

use super::eval::Outcome;
use super::*;

fn form(rules: &[(&str, &str)]) -> FormVersion {
    FormVersion {
        rules: rules
            .iter()
            .map(|(id, expression)| fixtures::rule(id, expression, &[]))
            .collect(),
        ..fixtures::version(
            1,
            vec![
                question("monthly_income", QuestionType::Number),
                question("monthly_savings", QuestionType::Number),
                question("name", QuestionType::Text),
                choice_question("city", QuestionType::SingleChoice, &["pune", "delhi"]),
                choice_question("langs", QuestionType::MultipleChoice, &["hi", "mr", "en"]),
            ],
        )
    }
}

/// A response whose answers are JSON values read as the tests mean them: a string is text (and the
/// choice for `city`), a number a number, an array the choices.
fn response(answers: &[(&str, serde_json::Value)]) -> Response {
    let answers = answers
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
        .collect();
    fixtures::response("f", "r", answers)
}

/// What the first rule of `rules` says about `response`, read from its violations.
fn outcome_of(rules: &RuleSet, response: &Response) -> Outcome {
    match rules.evaluate(response).into_iter().next() {
        None => Outcome::Pass,
        Some(Violation { error: None, .. }) => Outcome::Violated,
        Some(Violation {
            error: Some(error), ..
        }) => Outcome::Error(error),
    }
}

fn outcome(expression: &str, answers: &[(&str, serde_json::Value)]) -> Outcome {
    let rules = RuleSet::compile(&form(&[("r", expression)])).expect("compiles");
    outcome_of(&rules, &response(answers))
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
    let many: Vec<(String, &str)> = (0..=MAX_RULES).map(|i| (format!("r{i}"), "true")).collect();
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
    assert_eq!(outcome_of(&rules, &flagged), Outcome::Violated);
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

/// What the budget refuses: comprehensions over literals or nested too deep, large literals,
/// deep trees, computed or oversized patterns; the problem points at the rule's expression.
#[test]
fn rules_beyond_the_budget_are_refused_as_too_expensive() {
    let deep = format!(
        "{} > 0.0",
        vec!["monthly_income"; MAX_DEPTH + 2].join(" + ")
    );
    let long_list = format!(
        "city in [{}]",
        (0..=MAX_LITERAL_ENTRIES)
            .map(|i| format!("\"c{i}\""))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for expensive in [
        "[1, 2, 3].all(x, [1, 2, 3].all(y, x != y))",
        "langs.map(l, l).exists(l, l == \"en\")",
        "langs.all(a, langs.all(b, langs.all(c, a != b || b != c)))",
        deep.as_str(),
        long_list.as_str(),
        "name.matches(name)",
        "name.matches(\"((a{1,100}){1,100}){1,100}\")",
    ] {
        assert_eq!(
            problems(expensive),
            [(TOO_EXPENSIVE, "/rules/0/expression".to_owned())],
            "{expensive}"
        );
    }
    // Two nested comprehensions over a long answer list are refused by their estimated steps.
    let mut version = form(&[("r", "many.all(a, many.exists(b, a != b || a == \"c1\"))")]);
    let choices: Vec<String> = (0..200).map(|i| format!("c{i}")).collect();
    let choices: Vec<&str> = choices.iter().map(String::as_str).collect();
    version.questions.push(choice_question(
        "many",
        QuestionType::MultipleChoice,
        &choices,
    ));
    let found = RuleSet::compile(&version).expect_err("too many steps");
    assert_eq!(found[0].code, TOO_EXPENSIVE);
    assert!(
        found[0].detail.contains("evaluation steps"),
        "{}",
        found[0].detail
    );
    // Within the budget: the same over a short list, one comprehension, a small pattern.
    for fine in [
        "langs.all(a, langs.exists(b, a != b || a == \"en\"))",
        "langs.exists(l, l == \"en\")",
        "name.matches(\"^[a-z]+$\")",
        "city in [\"pune\", \"delhi\"]",
    ] {
        RuleSet::compile(&form(&[("r", fine)])).expect(fine);
    }
}

/// Only rule sets whose time can grow with the answers are evaluated off the async threads.
#[test]
fn a_forms_rules_together_have_a_budget_too() {
    // Each rule within its own budget (two nested comprehensions over 30 choices: about 11,000
    // steps); ten of them are more than a form's rules may take together.
    let expression = "many.all(a, many.exists(b, a != b || a == \"c1\"))";
    let with_rules = |count: usize| {
        let ids: Vec<String> = (0..count).map(|i| format!("r{i}")).collect();
        let rules: Vec<(&str, &str)> = ids.iter().map(|id| (id.as_str(), expression)).collect();
        let mut version = form(&rules);
        let choices: Vec<String> = (0..30).map(|i| format!("c{i}")).collect();
        let choices: Vec<&str> = choices.iter().map(String::as_str).collect();
        version.questions.push(choice_question(
            "many",
            QuestionType::MultipleChoice,
            &choices,
        ));
        RuleSet::compile(&version)
    };
    assert!(with_rules(1).is_ok());
    assert!(with_rules(5).is_ok());
    let found = with_rules(10).expect_err("too many steps together");
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].code, TOO_EXPENSIVE);
    assert_eq!(found[0].pointer, "/rules");
    assert!(found[0].detail.contains("together"), "{}", found[0].detail);
}

#[test]
fn rules_that_may_run_long_are_told_apart() {
    let long = |expression: &str| {
        RuleSet::compile(&form(&[("r", expression)]))
            .expect(expression)
            .may_run_long()
    };
    assert!(!long("monthly_savings + 100 <= monthly_income"));
    assert!(!long("-(monthly_savings * 2) < monthly_income / 3.0 + 1"));
    assert!(!long("city == \"pune\" && \"hi\" in langs"));
    assert!(long("name + name == \"x\""));
    assert!(long("langs.exists(l, l == \"en\")"));
    assert!(long("name.matches(\"^[a-z]+$\")"));
}
