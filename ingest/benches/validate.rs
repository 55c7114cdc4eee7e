//! What validating one typical response costs, step by step, printed (a benchmark, not a test:
//! timings on shared machines are noise): at the gateway (the response's shape), and in the
//! validate processor's hot loop (the form's rules; the target is 50,000 responses/s with 5 rules
//! per form on 2 cores). Run `cargo bench -p formstream-ingest --bench validate`.

use std::hint::black_box;
use std::time::Instant;

use formstream_core::phones::{Phones, normalise_phone};
use formstream_core::responses::{ResponseBody, Submission, validate};
use formstream_core::rules::RuleSet;
use formstream_ingest::digest::digest;
use formstream_schemas::fixtures::{self, choice_question, question};
use formstream_schemas::{FormVersion, QuestionType, Response, Rule};
use phonenumber::country;

const N: u32 = 20_000;

/// Five rules of the kinds forms have: numeric comparisons, arithmetic, choices, presence.
const RULES: [&str; 5] = [
    "savings <= income",
    "income <= 1000000",
    "rent + savings <= income * 1.5",
    "city == \"pune\" || !(\"mr\" in langs)",
    "income > 0.0 ? has_answer(\"savings\") : true",
];

fn form() -> FormVersion {
    FormVersion {
        default_region: Some("IN".into()),
        rules: RULES
            .iter()
            .enumerate()
            .map(|(i, expression)| Rule {
                message: "check this".into(),
                ..fixtures::rule(&format!("rule-{i}"), expression, &[])
            })
            .collect(),
        ..fixtures::version(
            1,
            vec![
                question("name", QuestionType::Text),
                question("income", QuestionType::Number),
                question("phone", QuestionType::Phone),
                choice_question("city", QuestionType::SingleChoice, &["pune", "delhi"]),
                choice_question("langs", QuestionType::MultipleChoice, &["hi", "mr", "en"]),
                question("savings", QuestionType::Number),
                question("rent", QuestionType::Number),
            ],
        )
    }
}

fn main() {
    let region = Some(country::Id::IN);
    let started = Instant::now();
    for i in 0..N {
        black_box(normalise_phone(
            &format!("+91 98765 {:05}", i % 100_000),
            region,
        ));
    }
    println!(
        "normalise_phone (uncached): {:?}/call",
        started.elapsed() / N
    );

    let body: ResponseBody = match serde_json::from_value(serde_json::json!({
        "response_id": "0b9e4a44-2d0c-4c41-9a57-6f2d8b0f4e11",
        "collector": {"id": "c1", "phone": "+91 98765 43210"},
        "answers": {"name": "Asha", "income": "12000.50", "phone": "+91 98765 43211", "city": "pune", "langs": ["mr", "hi"]}
    })) {
        Ok(body) => body,
        Err(error) => panic!("the sample body does not parse: {error}"),
    };
    let started = Instant::now();
    for _ in 0..N {
        black_box(digest(&body, "form"));
    }
    println!("digest: {:?}/call", started.elapsed() / N);

    let form = form();
    let phones = Phones::default();
    let submission = Submission {
        organisation: "acme",
        form_id: "f1",
        form: &form,
        revision: 0,
        received_at: 1,
        max_text_chars: 100,
        pointer_prefix: "",
        phones: &phones,
    };
    let started = Instant::now();
    for _ in 0..N {
        let _ = black_box(validate(&body, &submission));
    }
    println!(
        "validate (2 phones, cached): {:?}/call",
        started.elapsed() / N
    );

    let json = serde_json::to_vec(&body).unwrap_or_default();
    let started = Instant::now();
    for _ in 0..N {
        let _ = black_box(serde_json::from_slice::<ResponseBody>(&json));
    }
    println!("parse body: {:?}/call", started.elapsed() / N);

    let started = Instant::now();
    for _ in 0..1_000 {
        let _ = black_box(RuleSet::compile(&form));
    }
    println!(
        "compile 5 rules (once per form version): {:?}",
        started.elapsed() / 1_000
    );
    let rules = match RuleSet::compile(&form) {
        Ok(rules) => rules,
        Err(problems) => panic!("the bench rules do not compile: {problems:?}"),
    };
    let validated = |savings: &str| -> Response {
        let mut body = body.clone();
        body.answers.insert("savings".into(), savings.into());
        body.answers.insert("rent".into(), "3000".into());
        match validate(&body, &submission) {
            Ok(response) => response,
            Err(problems) => panic!("the bench response is invalid: {problems:?}"),
        }
    };
    for (label, savings) in [("clean", "1500"), ("flagged", "20000")] {
        let response = validated(savings);
        let violations = rules.evaluate(&response).len();
        let started = Instant::now();
        for _ in 0..N * 5 {
            black_box(rules.evaluate(black_box(&response)));
        }
        let per = started.elapsed() / (N * 5);
        println!(
            "evaluate 5 rules, {label} response ({violations} violations): {per:?}/response, {:.0}/s on one core",
            1.0 / per.as_secs_f64()
        );
    }
}
