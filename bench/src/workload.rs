//! The synthetic workload: forms with realistic questions, a Zipf-like popularity over them, and
//! request bodies generated before the timed phase.
//!
//! Invariant: everything here is a pure function of the seed, so two runs with the same flags send
//! the same forms and the same bodies (apart from fresh response ids), and every body answers its
//! form validly; `check_sample` proves the latter with the gateway's own validator before any load
//! is sent.

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use bytes::Bytes;
use formstream_core::forms::{FormActions, FormBody};
use formstream_core::phones::normalise_phone;
use formstream_core::responses::{ResponseBody, Submission, validate};
use formstream_schemas::{Codec, FormVersion, Response};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{Value, json};

/// Stands in for a response id in a body template; replaced by a fresh UUID per request.
pub const ID_PLACEHOLDER: &str = "ffffffff-ffff-4fff-bfff-ffffffffffff";
const ID_FIELD: &[u8] = b"\"response_id\":\"";

const WORDS: &[&str] = &[
    "water",
    "supply",
    "school",
    "clinic",
    "road",
    "market",
    "harvest",
    "rain",
    "well",
    "bus",
    "power",
    "cut",
    "daily",
    "weekly",
    "never",
    "sometimes",
    "family",
    "children",
    "teacher",
    "nurse",
    "price",
    "rice",
    "wheat",
    "seeds",
    "loan",
    "bank",
    "mobile",
    "signal",
    "good",
    "poor",
    "far",
    "near",
    "new",
    "broken",
    "repaired",
    "waiting",
    "since",
    "months",
    "village",
    "ward",
    "office",
    "queue",
    "fair",
];
const TOPICS: &[&str] = &[
    "Household survey",
    "Clinic visit",
    "School attendance",
    "Crop report",
    "Water point check",
    "Market prices",
    "Vaccination follow-up",
    "Training feedback",
    "Shop census",
    "Road condition",
];
const CHOICE_WORDS: &[&str] = &[
    "yes", "no", "unsure", "low", "medium", "high", "daily", "weekly", "monthly", "rarely", "pune",
    "nashik", "nagpur", "thane", "solapur", "kolhapur", "satara", "latur", "hindi", "marathi",
    "english",
];

/// A generated form: the body to create it, and the version the gateway will build from it.
pub struct BenchForm {
    pub id: String,
    /// JSON of `POST /v1/forms`.
    pub create_body: Value,
    pub version: FormVersion,
}

/// Zipf-like popularity: form k (1-based rank) is chosen with weight 1 / k^s.
pub struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    pub fn new(n: usize, exponent: f64) -> Self {
        let mut total = 0.0;
        let cumulative = (1..=n.max(1))
            .map(|k| {
                total += 1.0 / (k as f64).powf(exponent);
                total
            })
            .collect();
        Zipf { cumulative }
    }

    /// A 0-based form index.
    pub fn sample(&self, rng: &mut impl Rng) -> usize {
        let total = self.cumulative.last().copied().unwrap_or(1.0);
        let u = rng.random::<f64>() * total;
        self.cumulative
            .partition_point(|&c| c < u)
            .min(self.cumulative.len() - 1)
    }

    /// Share of all picks that go to the `top` most popular forms.
    pub fn share_of_top(&self, top: usize) -> f64 {
        let total = self.cumulative.last().copied().unwrap_or(1.0);
        let top = top.clamp(1, self.cumulative.len());
        self.cumulative[top - 1] / total
    }
}

/// `count` forms with ids `{prefix}-{i:04}`. Deterministic in `seed`.
pub fn generate_forms(
    prefix: &str,
    count: usize,
    rules_per_form: usize,
    seed: u64,
) -> anyhow::Result<Vec<BenchForm>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let now = formstream_core::time::now_millis();
    (0..count)
        .map(|i| {
            let id = format!("{prefix}-{i:04}");
            let n_questions = rng.random_range(4..=12);
            let questions: Vec<Value> = (0..n_questions).map(|q| question(&mut rng, q)).collect();
            let rules: Vec<Value> = (0..rules_per_form)
                .map(|r| rule(&questions[r % questions.len()], r))
                .collect();
            let create_body = json!({
                "id": id,
                "title": format!("{} #{i}", TOPICS[i % TOPICS.len()]),
                "description": sentence(&mut rng, 6, 20),
                "default_region": "IN",
                "questions": questions,
                "rules": rules,
            });
            let body: FormBody =
                serde_json::from_value(create_body.clone()).context("form body shape")?;
            // Rules only: the form's own checks and validate's action.
            let version = FormActions::new([formstream_validate::action::action()])
                .build_version(&body, 1, now)
                .map_err(|problems| {
                    anyhow::anyhow!("generated form {id} is invalid: {problems:?}")
                })?;
            Ok(BenchForm {
                id,
                create_body,
                version,
            })
        })
        .collect()
}

fn question(rng: &mut StdRng, index: usize) -> Value {
    let key = format!("q{index}");
    let text = format!("{}?", sentence(rng, 3, 10));
    let required = rng.random_bool(0.5);
    // Roughly what field forms hold: mostly free text and choices, some numbers, a few phones.
    let roll = rng.random_range(0..100);
    let (kind, n_choices) = match roll {
        0..30 => ("text", 0),
        30..50 => ("number", 0),
        50..75 => ("single_choice", rng.random_range(2..=8)),
        75..90 => ("multiple_choice", rng.random_range(3..=8)),
        _ => ("phone", 0),
    };
    let mut q = json!({"key": key, "text": text, "type": kind, "required": required});
    if n_choices > 0 {
        let choices: Vec<Value> = (0..n_choices)
            .map(|c| {
                let word = CHOICE_WORDS[(index * 7 + c) % CHOICE_WORDS.len()];
                json!({"key": format!("{word}_{c}"), "text": format!("{word} ({c})")})
            })
            .collect();
        q["choices"] = Value::Array(choices);
    }
    q
}

/// A rule over one question, of the kind field forms carry (ranges, lengths, formats); the number
/// rule flags the larger generated answers, so that some responses come out flagged.
fn rule(question: &Value, index: usize) -> Value {
    let key = question["key"].as_str().unwrap_or_default();
    let expression = match question["type"].as_str().unwrap_or_default() {
        "number" => format!("{key} >= 0.0 && {key} <= 5000.0"),
        "single_choice" => format!("size({key}) > 0"),
        "multiple_choice" => format!("size({key}) <= 5"),
        "phone" => format!("{key}.startsWith(\"+\")"),
        _ => format!("size({key}) <= 2000"),
    };
    json!({
        "id": format!("rule_{index}"),
        "expression": expression,
        "message": format!("Check the answer to {key}."),
        "question_keys": [key],
    })
}

fn sentence(rng: &mut impl Rng, min: usize, max: usize) -> String {
    let n = rng.random_range(min..=max);
    let mut s = String::new();
    for i in 0..n {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(WORDS[rng.random_range(0..WORDS.len())]);
    }
    s
}

/// An Indian mobile number, written the way collectors type them. Checked with the gateway's own
/// parser, so that every generated phone answer is valid.
fn phone(rng: &mut impl Rng) -> anyhow::Result<String> {
    for _ in 0..100 {
        let first = rng.random_range(6..=9);
        let rest: u64 = rng.random_range(0..1_000_000_000);
        let digits = format!("{first}{rest:09}");
        let written = match rng.random_range(0..3) {
            0 => format!("+91 {} {}", &digits[..5], &digits[5..]),
            1 => format!("0{digits}"),
            _ => digits,
        };
        if normalise_phone(&written, "IN".parse().ok()).is_some() {
            return Ok(written);
        }
    }
    bail!("could not generate a valid phone number in 100 tries")
}

/// The JSON answers of one response to `form`: every required question, most optional ones.
fn answers(rng: &mut impl Rng, form: &BenchForm) -> anyhow::Result<BTreeMap<String, Value>> {
    let mut answers = BTreeMap::new();
    for q in &form.version.questions {
        if !q.required && rng.random_bool(0.3) {
            continue;
        }
        use formstream_schemas::QuestionType as T;
        let value = match q.kind {
            T::Text => Value::String(sentence(rng, 1, 16)),
            T::Number => {
                if rng.random_bool(0.3) {
                    Value::String(format!(
                        "{}.{:02}",
                        rng.random_range(0..100_000),
                        rng.random_range(0..100)
                    ))
                } else {
                    json!(rng.random_range(0..100_000))
                }
            }
            T::Phone => Value::String(phone(rng)?),
            T::SingleChoice => {
                Value::String(q.choices[rng.random_range(0..q.choices.len())].key.clone())
            }
            T::MultipleChoice => {
                let picked: Vec<Value> = q
                    .choices
                    .iter()
                    .filter(|_| rng.random_bool(0.4))
                    .map(|c| Value::String(c.key.clone()))
                    .collect();
                if picked.is_empty() {
                    json!([q.choices[0].key])
                } else {
                    Value::Array(picked)
                }
            }
        };
        answers.insert(q.key.clone(), value);
    }
    Ok(answers)
}

#[derive(Serialize)]
struct Collector {
    id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    phone: Option<String>,
}

/// One response item as JSON: `form_id` only in batch items, the placeholder id only if asked.
#[derive(Serialize)]
struct Item<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    form_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_id: Option<&'static str>,
    collector: Collector,
    answers: BTreeMap<String, Value>,
}

fn item<'f>(
    rng: &mut impl Rng,
    form: &'f BenchForm,
    in_batch: bool,
    with_id: bool,
) -> anyhow::Result<Item<'f>> {
    let collector = Collector {
        id: format!("collector-{:05}", rng.random_range(0..20_000)),
        phone: if rng.random_bool(0.5) {
            Some(phone(rng)?)
        } else {
            None
        },
    };
    Ok(Item {
        form_id: in_batch.then_some(form.id.as_str()),
        response_id: with_id.then_some(ID_PLACEHOLDER),
        collector,
        answers: answers(rng, form)?,
    })
}

/// A pre-generated request: where it goes, its body, and where response ids are to be written.
pub struct Template {
    /// `/v1/forms/{id}/responses` or `/v1/responses/batch`.
    pub path: String,
    pub body: Bytes,
    /// Byte offsets of each 36-byte id placeholder in `body`.
    pub id_offsets: Vec<usize>,
    /// Responses it carries.
    pub items: usize,
}

fn id_offsets(body: &[u8]) -> Vec<usize> {
    let mut offsets = Vec::new();
    let mut from = 0;
    while let Some(pos) = body[from..]
        .windows(ID_FIELD.len())
        .position(|w| w == ID_FIELD)
    {
        let start = from + pos + ID_FIELD.len();
        if body.get(start..start + ID_PLACEHOLDER.len()) == Some(ID_PLACEHOLDER.as_bytes()) {
            offsets.push(start);
        }
        from = start;
    }
    offsets
}

/// `count` single-response requests, each to a form picked by `zipf`.
pub fn single_templates(
    forms: &[BenchForm],
    zipf: &Zipf,
    count: usize,
    with_ids: bool,
    seed: u64,
) -> anyhow::Result<Vec<Template>> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5151);
    (0..count)
        .map(|_| {
            let form = &forms[zipf.sample(&mut rng)];
            let body = serde_json::to_vec(&item(&mut rng, form, false, with_ids)?)?;
            Ok(Template {
                path: format!("/v1/forms/{}/responses", form.id),
                id_offsets: id_offsets(&body),
                body: Bytes::from(body),
                items: 1,
            })
        })
        .collect()
}

/// `count` batch requests of `batch_size` items, each item to a form picked by `zipf`.
pub fn batch_templates(
    forms: &[BenchForm],
    zipf: &Zipf,
    count: usize,
    batch_size: usize,
    with_ids: bool,
    seed: u64,
) -> anyhow::Result<Vec<Template>> {
    #[derive(Serialize)]
    struct Batch<'a> {
        items: Vec<Item<'a>>,
    }
    let mut rng = StdRng::seed_from_u64(seed ^ 0xBA7C);
    (0..count)
        .map(|_| {
            let items = (0..batch_size)
                .map(|_| {
                    let form = &forms[zipf.sample(&mut rng)];
                    item(&mut rng, form, true, with_ids)
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let body = serde_json::to_vec(&Batch { items })?;
            Ok(Template {
                path: "/v1/responses/batch".to_owned(),
                id_offsets: id_offsets(&body),
                body: Bytes::from(body),
                items: batch_size,
            })
        })
        .collect()
}

/// Sizes of what a sample of bodies turns into.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct SampleSizes {
    pub responses: usize,
    /// Mean JSON size of one response (a single-request body, or one batch item).
    pub avg_item_json_bytes: f64,
    /// Mean Avro value the gateway publishes for it (single-object encoding, header included).
    pub avg_avro_record_bytes: f64,
}

/// Validates `sample` generated responses with the gateway's validator and encodes them with its
/// codec. Fails if any is invalid: the benchmark must only send valid responses.
pub async fn check_sample(
    forms: &[BenchForm],
    zipf: &Zipf,
    sample: usize,
    organisation: &str,
    seed: u64,
) -> anyhow::Result<SampleSizes> {
    let encoder = Codec::single_object()
        .encoder::<Response>("bench-sizing")
        .await?;
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5A3E);
    let (mut json_bytes, mut avro_bytes) = (0usize, 0usize);
    for _ in 0..sample {
        let form = &forms[zipf.sample(&mut rng)];
        let json = serde_json::to_vec(&item(&mut rng, form, false, true)?)?;
        // Patch a real id in, as the load loop does.
        let mut json = json;
        for offset in id_offsets(&json) {
            uuid::Uuid::new_v4()
                .hyphenated()
                .encode_lower(&mut json[offset..offset + 36]);
        }
        let body: ResponseBody = serde_json::from_slice(&json).context("generated body shape")?;
        let response = validate(
            &body,
            &Submission {
                organisation,
                form_id: &form.id,
                form: &form.version,
                revision: 0,
                received_at: formstream_core::time::now_millis(),
                max_text_chars: 10_000,
                pointer_prefix: "",
                phones: &formstream_core::phones::Phones::default(),
            },
        )
        .map_err(|problems| {
            anyhow::anyhow!("generated response to {} is invalid: {problems:?}", form.id)
        })?;
        json_bytes += json.len();
        avro_bytes += encoder.encode(&response)?.len();
    }
    let n = sample.max(1) as f64;
    Ok(SampleSizes {
        responses: sample,
        avg_item_json_bytes: json_bytes as f64 / n,
        avg_avro_record_bytes: avro_bytes as f64 / n,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_is_skewed_and_in_range() {
        let zipf = Zipf::new(300, 1.1);
        let mut rng = StdRng::seed_from_u64(1);
        let mut hits = vec![0u32; 300];
        for _ in 0..100_000 {
            hits[zipf.sample(&mut rng)] += 1;
        }
        assert!(hits[0] > hits[9] * 5, "{} vs {}", hits[0], hits[9]);
        assert!(hits[299] > 0);
        assert!((zipf.share_of_top(300) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn placeholders_are_found_in_batches() {
        let forms = generate_forms("t", 5, 5, 7).expect("forms");
        let zipf = Zipf::new(5, 1.0);
        let batches = batch_templates(&forms, &zipf, 2, 10, true, 7).expect("batches");
        assert_eq!(batches[0].id_offsets.len(), 10);
        let singles = single_templates(&forms, &zipf, 3, false, 7).expect("singles");
        assert!(singles[0].id_offsets.is_empty());
    }

    #[tokio::test]
    async fn generated_responses_are_valid() {
        let forms = generate_forms("t", 20, 0, 3).expect("forms");
        let sizes = check_sample(&forms, &Zipf::new(20, 1.1), 200, "acme", 3)
            .await
            .expect("valid");
        assert!(sizes.avg_avro_record_bytes > 50.0);
    }
}
