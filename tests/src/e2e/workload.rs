//! The end-to-end scenario's data: forms that carry every action, and responses to them with Zipf
//! popularity, rule breakers, corrections and poison records.
//!
//! Invariant: everything is a pure function of (run id, seed, index): the loader generates
//! response `i` when it sends it, and the checks generate it again to know what its effects must
//! be, so nothing of a million responses is held in memory besides what was acknowledged.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value, json};

/// The cities of the forms' city question (choice keys).
pub const CITIES: &[&str] = &[
    "pune", "nashik", "nagpur", "thane", "solapur", "kolhapur", "satara", "latur",
];

/// The words of the text answers: plain lower-case ASCII, so that every word is one token for the
/// slang index and the expected counts need no tokenizer.
pub const WORDS: &[&str] = &[
    "water", "supply", "school", "clinic", "road", "market", "harvest", "rain", "well", "bus",
    "power", "cut", "daily", "weekly", "never", "family", "children", "teacher", "nurse", "price",
    "rice", "wheat", "seeds", "loan", "bank", "mobile", "signal", "good", "poor", "far", "near",
    "broken", "repaired", "waiting", "months", "village", "ward", "office", "queue", "fair",
];

/// The slang action's text questions.
pub const TEXT_QUESTIONS: &[&str] = &["comments", "local_words"];

/// A receipt template that divides by the household size: it renders for every household but an
/// empty one, which is what the template-poison records answer.
const TEMPLATE: &str = "Thank you {{ answers.name }} for taking part in {{ form.title }}: {{ (answers.income | int) // (answers.members | int) }} per member a month. Ref {{ receipt_ref }}";

/// Why a poison record cannot have its receipt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Poison {
    /// A well-formed number Twilio refuses (400/21211).
    RefusedNumber,
    /// A household of 0: the receipt template divides by zero.
    Template,
}

/// The scenario's data, for one run.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Distinguishes this run's forms and response ids from every other run's.
    pub run: String,
    pub seed: u64,
    pub forms: usize,
    pub responses: usize,
    zipf: Vec<f64>,
}

/// One response as planned: revision 0, and the correction (revision 1) when it gets one.
#[derive(Debug, Clone)]
pub struct Planned {
    pub index: usize,
    pub response_id: String,
    pub form: usize,
    pub collector_id: String,
    pub collector_phone: String,
    /// E.164, when the respondent answered one.
    pub phone: Option<String>,
    pub city: &'static str,
    /// Revision 0 breaks the savings rule.
    pub flagged: bool,
    pub poison: Option<Poison>,
    /// A correction (revision 1) follows; it always passes the rules.
    pub corrected: bool,
    answers: [Map<String, Value>; 2],
}

impl Planned {
    /// The answers of `revision` (0, or 1 for a corrected response).
    pub fn answers(&self, revision: i32) -> &Map<String, Value> {
        &self.answers[revision.clamp(0, 1) as usize]
    }

    /// The newest revision this response will have.
    pub fn last_revision(&self) -> i32 {
        i32::from(self.corrected)
    }

    /// Whether `revision` breaks a rule.
    pub fn flagged_at(&self, revision: i32) -> bool {
        revision == 0 && self.flagged
    }

    /// The text answer to `question` at `revision`, if given.
    pub fn text(&self, revision: i32, question: &str) -> Option<&str> {
        self.answers(revision).get(question).and_then(Value::as_str)
    }

    /// The batch item of revision 0.
    pub fn item(&self, form_id: &str) -> Value {
        json!({
            "form_id": form_id,
            "response_id": self.response_id,
            "collector": {"id": self.collector_id, "phone": self.collector_phone},
            "answers": self.answers[0],
        })
    }

    /// The body of the correction's PUT.
    pub fn correction(&self) -> Value {
        json!({
            "revision": 1,
            "collector": {"id": self.collector_id, "phone": self.collector_phone},
            "answers": self.answers[1],
        })
    }
}

impl Workload {
    pub fn new(run: &str, seed: u64, forms: usize, responses: usize, zipf_exponent: f64) -> Self {
        let mut total = 0.0;
        let zipf = (1..=forms.max(1))
            .map(|k| {
                total += 1.0 / (k as f64).powf(zipf_exponent);
                total
            })
            .collect();
        Workload {
            run: run.to_owned(),
            seed,
            forms,
            responses,
            zipf,
        }
    }

    pub fn form_id(&self, form: usize) -> String {
        format!("{}-f{form:03}", self.run)
    }

    /// The share of responses the `top` most popular forms get.
    pub fn share_of_top(&self, top: usize) -> f64 {
        let total = self.zipf.last().copied().unwrap_or(1.0);
        self.zipf[top.clamp(1, self.zipf.len()) - 1] / total
    }

    /// The `POST /v1/forms` body of form `form`: every action of every processor.
    pub fn form_body(&self, form: usize) -> Value {
        let choices: Vec<Value> = CITIES
            .iter()
            .map(|c| {
                let mut text = c.to_string();
                text[..1].make_ascii_uppercase();
                json!({"key": c, "text": text})
            })
            .collect();
        json!({
            "id": self.form_id(form),
            "title": format!("Household survey {form}"),
            "description": "Income, savings and the words people use",
            "default_region": "IN",
            "questions": [
                {"key": "name", "text": "Your name", "type": "text", "required": true, "max_length": 60},
                {"key": "phone", "text": "Mobile number", "type": "phone"},
                {"key": "city", "text": "City", "type": "single_choice", "required": true, "choices": choices},
                {"key": "income", "text": "Monthly income", "type": "number", "required": true},
                {"key": "savings", "text": "Monthly savings", "type": "number", "required": true},
                {"key": "members", "text": "Household members", "type": "number", "required": true},
                {"key": "comments", "text": "Comments", "type": "text"},
                {"key": "local_words", "text": "Words you use locally", "type": "text"}
            ],
            "rules": [{
                "id": "savings-le-income",
                "expression": "savings <= income",
                "message": "Savings cannot exceed income; check both.",
                "question_keys": ["savings", "income"]
            }],
            "notify": {"sms_collector": true},
            "receipt": {"phone_question": "phone", "template": TEMPLATE},
            "slang": {"city_question": "city", "text_questions": TEXT_QUESTIONS},
            "sheets": {"create": true}
        })
    }

    /// Response `index`, as planned.
    pub fn response(&self, index: usize) -> Planned {
        let mut rng =
            StdRng::seed_from_u64(self.seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let form = {
            let total = self.zipf.last().copied().unwrap_or(1.0);
            let u = rng.random::<f64>() * total;
            self.zipf
                .partition_point(|&c| c < u)
                .min(self.zipf.len() - 1)
        };
        let mut id_bytes = [0u8; 16];
        rng.fill(&mut id_bytes);
        // The run's own bits in the id, so that two runs never share a response id.
        let run_hash = self
            .run
            .bytes()
            .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
        id_bytes[..4].copy_from_slice(&run_hash.to_be_bytes());
        let response_id = uuid::Builder::from_random_bytes(id_bytes)
            .into_uuid()
            .to_string();
        // 0.1 %: every 1,000th response, the two kinds in turn.
        let poison = (index % 1_000 == 500).then(|| {
            if (index / 1_000).is_multiple_of(2) {
                Poison::RefusedNumber
            } else {
                Poison::Template
            }
        });
        let flagged = poison.is_none() && rng.random_bool(0.10);
        let corrected = poison.is_none() && rng.random_bool(0.02);
        let phone = if poison.is_some() || rng.random_bool(0.8) {
            Some(indian_mobile(
                &mut rng,
                poison == Some(Poison::RefusedNumber),
            ))
        } else {
            None
        };
        let collector = rng.random_range(0..2_000u32);
        let city = CITIES[rng.random_range(0..CITIES.len())];
        let income: u32 = rng.random_range(5_000..100_000);
        let savings = if flagged {
            income + rng.random_range(1..5_000)
        } else {
            rng.random_range(0..=income)
        };
        let members: u32 = if poison == Some(Poison::Template) {
            0
        } else {
            rng.random_range(1..9)
        };
        let mut answers = Map::new();
        answers.insert("name".into(), json!(format!("Respondent {index}")));
        if let Some(phone) = &phone {
            answers.insert("phone".into(), json!(phone));
        }
        answers.insert("city".into(), json!(city));
        answers.insert("income".into(), json!(income));
        answers.insert("savings".into(), json!(savings));
        answers.insert("members".into(), json!(members));
        if rng.random_bool(0.9) {
            answers.insert("comments".into(), json!(sentence(&mut rng, 3, 12)));
        }
        if rng.random_bool(0.7) {
            answers.insert("local_words".into(), json!(sentence(&mut rng, 1, 5)));
        }
        let mut corrected_answers = answers.clone();
        if corrected {
            // The correction fixes the savings and rewrites the comments.
            corrected_answers.insert("savings".into(), json!(income / 10));
            corrected_answers.insert("comments".into(), json!(sentence(&mut rng, 3, 12)));
        }
        Planned {
            index,
            response_id,
            form,
            collector_id: format!("collector-{collector:04}"),
            collector_phone: format!("+9198{:08}", 10_000_000 + collector),
            phone,
            city,
            flagged,
            poison,
            corrected,
            answers: [answers, corrected_answers],
        }
    }
}

/// An Indian mobile number in E.164. Refused numbers come from their own range (+91 70...), so
/// that no valid respondent shares one.
fn indian_mobile(rng: &mut StdRng, refused: bool) -> String {
    let first = if refused {
        70
    } else {
        rng.random_range(90..100)
    };
    format!("+91{first}{:08}", rng.random_range(0..100_000_000u32))
}

fn sentence(rng: &mut StdRng, min: usize, max: usize) -> String {
    let n = rng.random_range(min..=max);
    (0..n)
        .map(|_| WORDS[rng.random_range(0..WORDS.len())])
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_reproducible_and_every_form_body_is_valid() {
        let workload = Workload::new("e2e-test", 7, 20, 10_000, 1.1);
        let a = workload.response(1_500);
        let b = workload.response(1_500);
        assert_eq!(a.response_id, b.response_id);
        assert_eq!(a.answers(0), b.answers(0));
        assert_eq!(a.poison, Some(Poison::Template));
        assert_eq!(workload.response(500).poison, Some(Poison::RefusedNumber));
        let planned: Vec<Planned> = (0..10_000).map(|i| workload.response(i)).collect();
        let flagged = planned.iter().filter(|p| p.flagged).count();
        assert!(
            (800..1_200).contains(&flagged),
            "{flagged} flagged of 10,000"
        );
        let hottest = planned.iter().filter(|p| p.form == 0).count();
        assert!(hottest > 1_500, "the hottest form has {hottest} of 10,000");
        for form in 0..20 {
            let body: formstream_core::forms::FormBody =
                serde_json::from_value(workload.form_body(form)).expect("a form body");
            (crate::form_actions().build_version(&body, 1, 0)).expect("a valid form");
        }
        // Every phone is one the gateway accepts, as the gateway writes it.
        for p in planned.iter().take(2_000) {
            for phone in p.phone.iter().chain([&p.collector_phone]) {
                assert_eq!(
                    formstream_core::phones::normalise_phone(phone, "IN".parse().ok()).as_ref(),
                    Some(phone),
                    "{phone}"
                );
            }
        }
    }
}
