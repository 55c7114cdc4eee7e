//! What validating one typical response costs, step by step, printed (a benchmark, not a test:
//! timings on shared machines are noise). Run `cargo bench -p formstream-ingest --bench validate`.

use std::hint::black_box;
use std::time::Instant;

use formstream_ingest::responses::{Phones, ResponseBody, Submission, normalise_phone, validate};
use formstream_schemas::{Choice, FormVersion, Question, QuestionType};
use phonenumber::country;

const N: u32 = 20_000;

fn form() -> FormVersion {
    let question = |key: &str, kind, choices: &[&str]| Question {
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
    };
    FormVersion {
        version: 1,
        title: "t".into(),
        description: String::new(),
        default_region: Some("IN".into()),
        questions: vec![
            question("name", QuestionType::Text, &[]),
            question("income", QuestionType::Number, &[]),
            question("phone", QuestionType::Phone, &[]),
            question("city", QuestionType::SingleChoice, &["pune", "delhi"]),
            question("langs", QuestionType::MultipleChoice, &["hi", "mr", "en"]),
        ],
        metadata_json: "{}".into(),
        rules: vec![],
        notify: Default::default(),
        created_at: 0,
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
        black_box(body.digest("form"));
    }
    println!("digest: {:?}/call", started.elapsed() / N);

    let form = form();
    let phones = Phones::default();
    let started = Instant::now();
    for _ in 0..N {
        let _ = black_box(validate(
            &body,
            &Submission {
                organisation: "acme",
                form_id: "f1",
                form: &form,
                revision: 0,
                received_at: 1,
                max_text_chars: 100,
                pointer_prefix: "",
                phones: &phones,
            },
        ));
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
}
