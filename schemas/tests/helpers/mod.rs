//! Shared test fixtures: sample records that cover every shape in the schemas, the evolved
//! `Response` (v2), and a stateful fake Confluent Schema Registry.
//!
//! Invariant: the fake behaves like the real registry for the endpoints the codec uses: it assigns
//! global ids, deduplicates identical schemas, checks BACKWARD compatibility per subject, answers
//! unknown ids with 404/40403, enforces basic auth when configured, and can be told to fail.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use apache_avro::Schema;
use apache_avro::schema_compatibility::SchemaCompatibility;
use formstream_schemas::*;
use serde::{Deserialize, Serialize};
use wiremock::matchers::any;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

/// `value` as `codec`'s encoder for `topic` writes it.
pub async fn encoded<T: AvroRecord>(codec: &Codec, topic: &str, value: &T) -> Vec<u8> {
    codec
        .encoder::<T>(topic)
        .await
        .expect("an encoder")
        .encode(value)
        .expect("encodes")
}

pub fn forms() -> Vec<Form> {
    let q =
        |key: &str, kind: QuestionType, choices: Vec<Choice>, max_length: Option<i32>| Question {
            key: key.into(),
            text: format!("What is your {key}?"),
            kind,
            required: kind == QuestionType::Phone,
            choices,
            max_length,
        };
    let choice = |key: &str| Choice {
        key: key.into(),
        text: key.to_uppercase(),
    };
    let v1 = FormVersion {
        version: 1,
        title: "Household survey".into(),
        description: String::new(),
        default_region: None,
        questions: vec![],
        metadata_json: "{}".into(),
        actions_json: "{}".into(),
        rules: vec![],
        notify: Notify::default(),
        receipt: None,
        slang: None,
        sheets: None,
        created_at: 1_700_000_000_000,
    };
    let v2 = FormVersion {
        version: 2,
        title: "Household survey — ঘরোয়া সমীক্ষা".into(),
        description: "With phone".into(),
        default_region: Some("IN".into()),
        questions: vec![
            q("name", QuestionType::Text, vec![], Some(80)),
            q(
                "city",
                QuestionType::SingleChoice,
                vec![choice("pune"), choice("kolkata")],
                None,
            ),
            q(
                "assets",
                QuestionType::MultipleChoice,
                vec![choice("tv"), choice("bike")],
                None,
            ),
            q("monthly_income", QuestionType::Number, vec![], None),
            q("phone", QuestionType::Phone, vec![], None),
        ],
        metadata_json: r#"{"theme":"dark"}"#.into(),
        actions_json: "{}".into(),
        rules: vec![
            Rule {
                id: "savings-le-income".into(),
                expression: "monthly_savings <= monthly_income".into(),
                constraint: None,
                message: "Savings cannot exceed income".into(),
                question_keys: vec!["monthly_savings".into(), "monthly_income".into()],
            },
            Rule {
                id: "income-cap".into(),
                expression: "monthly_income <= 1000000.0".into(),
                constraint: Some(". <= 1000000".into()),
                message: "Check the income".into(),
                question_keys: vec!["monthly_income".into()],
            },
        ],
        notify: Notify {
            sms_collector: true,
            webhook_url: Some("https://hooks.example.org/flags".into()),
        },
        receipt: Some(ReceiptAction {
            phone_question: "phone".into(),
            template:
                "Thank you {{ answers.name }} for answering {{ form.title }}. Ref {{ receipt_ref }}"
                    .into(),
        }),
        slang: Some(Slang {
            city_question: "city".into(),
            text_questions: vec!["name".into()],
        }),
        sheets: Some(Sheets {
            spreadsheet_id: Some("1BxiMVs0XRA5nFMdKvBdBZjgmUUqptlbs74OgvE2upms".into()),
        }),
        created_at: 1_700_000_100_000,
    };
    vec![
        Form {
            id: "f-empty".into(),
            organisation: "org".into(),
            created_at: 0,
            versions: vec![],
        },
        Form {
            id: "f-1".into(),
            organisation: "org".into(),
            created_at: 1_700_000_000_000,
            versions: vec![v1, v2],
        },
    ]
}

pub fn responses() -> Vec<Response> {
    let answer = |key: &str, text: Option<&str>, number: Option<f64>, choices: &[&str]| Answer {
        question_key: key.into(),
        text: text.map(Into::into),
        number,
        choices: choices.iter().map(|c| c.to_string()).collect(),
    };
    vec![
        Response {
            response_id: "00000000-0000-0000-0000-000000000001".into(),
            form_id: "f-1".into(),
            form_version: 2,
            organisation: "org".into(),
            revision: 0,
            submitted_at: 1_700_000_200_000,
            received_at: 1_700_000_200_500,
            collector: Collector {
                id: "c-1".into(),
                phone: None,
            },
            answers: vec![],
            metadata_json: "{}".into(),
        },
        Response {
            response_id: "00000000-0000-0000-0000-000000000002".into(),
            form_id: "f-1".into(),
            form_version: 2,
            organisation: "org".into(),
            revision: 3,
            submitted_at: -1,
            received_at: i64::MAX,
            collector: Collector {
                id: "c-2".into(),
                phone: Some("+919876543210".into()),
            },
            answers: vec![
                answer("name", Some("প্রিয়া"), None, &[]),
                answer("city", Some("pune"), None, &["pune"]),
                answer("assets", Some("tv,bike"), None, &["tv", "bike"]),
                answer("monthly_income", Some("25000.50"), Some(25000.5), &[]),
                answer("skipped", None, None, &[]),
            ],
            metadata_json: r#"{"app":"1.2"}"#.into(),
        },
    ]
}

pub fn flags() -> Vec<ResponseFlag> {
    vec![
        ResponseFlag {
            response_id: "r-1".into(),
            form_id: "f-1".into(),
            form_version: 2,
            organisation: "org".into(),
            revision: 0,
            collector_id: "c-1".into(),
            collector_phone: None,
            status: FlagStatus::Clean,
            violations: vec![],
            evaluated_at: 1_700_000_300_000,
        },
        ResponseFlag {
            response_id: "r-2".into(),
            form_id: "f-1".into(),
            form_version: 2,
            organisation: "org".into(),
            revision: 1,
            collector_id: "c-2".into(),
            collector_phone: Some("+919876543210".into()),
            status: FlagStatus::Flagged,
            violations: vec![
                Violation {
                    rule_id: "savings_le_income".into(),
                    message: "Savings exceed income".into(),
                    question_keys: vec!["monthly_savings".into(), "monthly_income".into()],
                    error: None,
                },
                Violation {
                    rule_id: "age_number".into(),
                    message: "Could not evaluate".into(),
                    question_keys: vec![],
                    error: Some("age is not a number".into()),
                },
            ],
            evaluated_at: 1_700_000_300_001,
        },
    ]
}

/// `Response` v2: the same record with a `channel` field added with default "app".
pub const RESPONSE_V2_JSON: &str = include_str!("../fixtures/response-v2.avsc");

pub static RESPONSE_V2: LazyLock<Schema> =
    LazyLock::new(|| Schema::parse_str(RESPONSE_V2_JSON).expect("fixture parses"));

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseV2 {
    pub response_id: String,
    pub form_id: String,
    pub form_version: i32,
    pub organisation: String,
    pub revision: i32,
    pub submitted_at: i64,
    pub received_at: i64,
    pub collector: Collector,
    pub answers: Vec<Answer>,
    pub metadata_json: String,
    pub channel: String,
}

impl ResponseV2 {
    pub fn from_v1(r: Response, channel: &str) -> Self {
        ResponseV2 {
            response_id: r.response_id,
            form_id: r.form_id,
            form_version: r.form_version,
            organisation: r.organisation,
            revision: r.revision,
            submitted_at: r.submitted_at,
            received_at: r.received_at,
            collector: r.collector,
            answers: r.answers,
            metadata_json: r.metadata_json,
            channel: channel.into(),
        }
    }
}

impl AvroRecord for ResponseV2 {
    const FULL_NAME: &'static str = "io.formstream.v1.Response";
    const SCHEMA_JSON: &'static str = RESPONSE_V2_JSON;
    fn schema() -> &'static Schema {
        &RESPONSE_V2
    }
}

/// The fake registry's state, shared with the test so it can look and steer.
#[derive(Default)]
pub struct RegistryState {
    /// Global id -> schema text, as registered.
    pub schemas: Vec<String>,
    /// Subject -> ids of its versions, oldest first.
    pub subjects: HashMap<String, Vec<u32>>,
    /// Answer every request with this status (e.g. 503) while set.
    pub fail_with: Option<u16>,
    /// Delay every answer by this much while set (to trigger client timeouts).
    pub delay: Option<Duration>,
}

pub struct FakeRegistry {
    pub server: MockServer,
    pub state: Arc<Mutex<RegistryState>>,
    pub registrations: Arc<AtomicUsize>,
    pub fetches: Arc<AtomicUsize>,
}

impl FakeRegistry {
    /// Starts a fake; with `auth`, every request must carry that basic-auth user and password.
    pub async fn start(auth: Option<(&str, &str)>) -> FakeRegistry {
        let server = MockServer::start().await;
        let state = Arc::new(Mutex::new(RegistryState::default()));
        let registrations = Arc::new(AtomicUsize::new(0));
        let fetches = Arc::new(AtomicUsize::new(0));
        let responder = Responder {
            state: state.clone(),
            auth: auth.map(|(u, p)| format!("Basic {}", base64(format!("{u}:{p}").as_bytes()))),
            registrations: registrations.clone(),
            fetches: fetches.clone(),
        };
        Mock::given(any())
            .respond_with(responder)
            .mount(&server)
            .await;
        FakeRegistry {
            server,
            state,
            registrations,
            fetches,
        }
    }

    pub fn config(&self) -> RegistryConfig {
        RegistryConfig {
            url: self.server.uri(),
            username: None,
            password: None,
            timeout: Duration::from_secs(5),
        }
    }

    /// Registers a schema directly, as another producer would.
    pub async fn register(&self, subject: &str, schema_json: &str) -> u32 {
        let url = format!("{}/subjects/{subject}/versions", self.server.uri());
        let body: serde_json::Value = reqwest::Client::new()
            .post(url)
            .json(&serde_json::json!({ "schema": schema_json }))
            .send()
            .await
            .expect("fake answers")
            .json()
            .await
            .expect("json");
        body["id"].as_u64().expect("an id") as u32
    }
}

struct Responder {
    state: Arc<Mutex<RegistryState>>,
    auth: Option<String>,
    registrations: Arc<AtomicUsize>,
    fetches: Arc<AtomicUsize>,
}

fn error(status: u16, code: i64, message: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_raw(
        serde_json::json!({ "error_code": code, "message": message }).to_string(),
        "application/vnd.schemaregistry.v1+json",
    )
}

fn ok(body: serde_json::Value) -> ResponseTemplate {
    ResponseTemplate::new(200)
        .set_body_raw(body.to_string(), "application/vnd.schemaregistry.v1+json")
}

impl Respond for Responder {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let mut state = self.state.lock().unwrap();
        let answer = self.answer(&mut state, request);
        match state.delay {
            Some(delay) => answer.set_delay(delay),
            None => answer,
        }
    }
}

impl Responder {
    fn answer(&self, state: &mut RegistryState, request: &Request) -> ResponseTemplate {
        if let Some(status) = state.fail_with {
            return error(status, i64::from(status) * 100, "injected failure");
        }
        if let Some(expected) = &self.auth {
            let given = request
                .headers
                .get("authorization")
                .and_then(|v| v.to_str().ok());
            if given != Some(expected.as_str()) {
                return error(401, 401, "Unauthorized");
            }
        }
        let segments: Vec<&str> = request
            .url
            .path_segments()
            .map(|s| s.collect())
            .unwrap_or_default();
        match (request.method.as_str(), segments.as_slice()) {
            ("POST", ["subjects", subject, "versions"]) => {
                self.registrations.fetch_add(1, Ordering::SeqCst);
                let Ok(body) = request.body_json::<serde_json::Value>() else {
                    return error(422, 42201, "Invalid request body");
                };
                let Some(text) = body["schema"].as_str() else {
                    return error(422, 42201, "Missing schema");
                };
                let Ok(schema) = Schema::parse_str(text) else {
                    return error(422, 42201, "Invalid Avro schema");
                };
                // BACKWARD (the registry default): the new schema must read the latest version.
                if let Some(&latest) = state.subjects.get(*subject).and_then(|v| v.last()) {
                    let previous = Schema::parse_str(&state.schemas[latest as usize - 1]).unwrap();
                    if SchemaCompatibility::can_read(&previous, &schema).is_err() {
                        return error(
                            409,
                            409,
                            "Schema being registered is incompatible with an earlier schema",
                        );
                    }
                }
                let canonical = schema.canonical_form();
                let existing = state.schemas.iter().position(|s| {
                    Schema::parse_str(s)
                        .map(|s| s.canonical_form() == canonical)
                        .unwrap_or(false)
                });
                let id = match existing {
                    Some(index) => index as u32 + 1,
                    None => {
                        state.schemas.push(text.to_owned());
                        state.schemas.len() as u32
                    }
                };
                let versions = state.subjects.entry(subject.to_string()).or_default();
                if !versions.contains(&id) {
                    versions.push(id);
                }
                ok(serde_json::json!({ "id": id }))
            }
            ("GET", ["schemas", "ids", id]) => {
                self.fetches.fetch_add(1, Ordering::SeqCst);
                let schema = id
                    .parse::<usize>()
                    .ok()
                    .and_then(|id| id.checked_sub(1))
                    .and_then(|i| state.schemas.get(i));
                match schema {
                    Some(s) => ok(serde_json::json!({ "schema": s })),
                    None => error(404, 40403, &format!("Schema {id} not found")),
                }
            }
            _ => error(404, 404, "HTTP 404 Not Found"),
        }
    }
}

fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// CRC-64-AVRO written from the specification, independent of apache-avro's implementation.
pub fn rabin_from_spec(data: &[u8]) -> u64 {
    const EMPTY: u64 = 0xc15d_213a_a4d7_a795;
    let mut table = [0u64; 256];
    for (i, slot) in table.iter_mut().enumerate() {
        let mut fp = i as u64;
        for _ in 0..8 {
            fp = (fp >> 1) ^ (EMPTY & (0u64.wrapping_sub(fp & 1)));
        }
        *slot = fp;
    }
    let mut fp = EMPTY;
    for &b in data {
        fp = (fp >> 8) ^ table[((fp ^ u64::from(b)) & 0xff) as usize];
    }
    fp
}

/// `Form` as it was before rules and notification settings were added (fixture `form-v1.avsc`).
pub const FORM_V1_JSON: &str = include_str!("../fixtures/form-v1.avsc");

pub static FORM_V1: LazyLock<Schema> =
    LazyLock::new(|| Schema::parse_str(FORM_V1_JSON).expect("fixture parses"));

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FormV1 {
    pub id: String,
    pub organisation: String,
    pub created_at: i64,
    pub versions: Vec<FormVersionV1>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FormVersionV1 {
    pub version: i32,
    pub title: String,
    pub description: String,
    pub default_region: Option<String>,
    pub questions: Vec<Question>,
    pub metadata_json: String,
    pub created_at: i64,
}

impl FormV1 {
    /// The current form without what v1 did not have.
    pub fn from_current(form: Form) -> Self {
        FormV1 {
            id: form.id,
            organisation: form.organisation,
            created_at: form.created_at,
            versions: form
                .versions
                .into_iter()
                .map(|v| FormVersionV1 {
                    version: v.version,
                    title: v.title,
                    description: v.description,
                    default_region: v.default_region,
                    questions: v.questions,
                    metadata_json: v.metadata_json,
                    created_at: v.created_at,
                })
                .collect(),
        }
    }
}

impl AvroRecord for FormV1 {
    const FULL_NAME: &'static str = "io.formstream.v1.Form";
    const SCHEMA_JSON: &'static str = FORM_V1_JSON;
    fn schema() -> &'static Schema {
        &FORM_V1
    }
}

/// `Form` as it was before receipt actions were added (fixture `form-v2.avsc`): rules and notify,
/// no `receipt`.
pub const FORM_V2_JSON: &str = include_str!("../fixtures/form-v2.avsc");

pub static FORM_V2: LazyLock<Schema> =
    LazyLock::new(|| Schema::parse_str(FORM_V2_JSON).expect("fixture parses"));

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FormV2 {
    pub id: String,
    pub organisation: String,
    pub created_at: i64,
    pub versions: Vec<FormVersionV2>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FormVersionV2 {
    pub version: i32,
    pub title: String,
    pub description: String,
    pub default_region: Option<String>,
    pub questions: Vec<Question>,
    pub metadata_json: String,
    pub rules: Vec<Rule>,
    pub notify: Notify,
    pub created_at: i64,
}

impl FormV2 {
    /// The current form without its receipt actions.
    pub fn from_current(form: Form) -> Self {
        FormV2 {
            id: form.id,
            organisation: form.organisation,
            created_at: form.created_at,
            versions: form
                .versions
                .into_iter()
                .map(|v| FormVersionV2 {
                    version: v.version,
                    title: v.title,
                    description: v.description,
                    default_region: v.default_region,
                    questions: v.questions,
                    metadata_json: v.metadata_json,
                    rules: v.rules,
                    notify: v.notify,
                    created_at: v.created_at,
                })
                .collect(),
        }
    }
}

impl AvroRecord for FormV2 {
    const FULL_NAME: &'static str = "io.formstream.v1.Form";
    const SCHEMA_JSON: &'static str = FORM_V2_JSON;
    fn schema() -> &'static Schema {
        &FORM_V2
    }
}
