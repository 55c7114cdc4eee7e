//! Rust twins of the Avro records in `schemas/avro/*.avsc`.
//!
//! Invariant: every field here has a field of the same name and type in the matching `.avsc`, and
//! nothing else; the codec's round-trip tests fail if the two drift apart.

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch (Avro `timestamp-millis`).
pub type TimestampMillis = i64;

/// A form with its whole version history: the value of the compacted `forms` topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Form {
    pub id: String,
    pub organisation: String,
    pub created_at: TimestampMillis,
    /// Oldest first; never empty. The last one is the current version.
    pub versions: Vec<FormVersion>,
}

impl Form {
    /// The newest version. Forms are never published without one.
    pub fn current(&self) -> Option<&FormVersion> {
        self.versions.last()
    }

    /// The version a response answered, if the form has it.
    pub fn version(&self, version: i32) -> Option<&FormVersion> {
        self.versions.iter().find(|v| v.version == version)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FormVersion {
    pub version: i32,
    pub title: String,
    pub description: String,
    pub default_region: Option<String>,
    pub questions: Vec<Question>,
    pub metadata_json: String,
    /// Checked by the validate processor against every response of this version, in order.
    pub rules: Vec<Rule>,
    pub notify: Notify,
    /// The SMS receipt to the respondent, if the form sends one (the receipts processor).
    pub receipt: Option<ReceiptAction>,
    /// What the slang processor indexes; `None` when the form has no slang action.
    pub slang: Option<Slang>,
    /// Where the sheets processor exports this form; `None` when the form is not exported.
    pub sheets: Option<Sheets>,
    /// The actions processors declare themselves (`formstream_core::forms::actions`), as a JSON
    /// object: action name to its settings; `{}` when the form has none.
    pub actions_json: String,
    pub created_at: TimestampMillis,
}

impl FormVersion {
    pub fn question(&self, key: &str) -> Option<&Question> {
        self.questions.iter().find(|q| q.key == key)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Question {
    pub key: String,
    pub text: String,
    #[serde(rename = "type")]
    pub kind: QuestionType,
    pub required: bool,
    pub choices: Vec<Choice>,
    pub max_length: Option<i32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum QuestionType {
    Text,
    SingleChoice,
    MultipleChoice,
    Number,
    Phone,
}

impl QuestionType {
    pub fn has_choices(self) -> bool {
        matches!(
            self,
            QuestionType::SingleChoice | QuestionType::MultipleChoice
        )
    }
}

/// A business rule over the answers; its semantics are defined in formstream-core's `rules`
/// module, which both the gateway (at save time) and the validate processor use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub id: String,
    /// CEL, always; a rule written as an XLSForm constraint is stored translated.
    pub expression: String,
    /// The XLSForm constraint as the designer wrote it, so that the API shows it back unchanged.
    pub constraint: Option<String>,
    pub message: String,
    pub question_keys: Vec<String>,
}

/// Who is told when a response is flagged.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notify {
    pub sms_collector: bool,
    pub webhook_url: Option<String>,
}

/// A form version's receipt action: text the respondent once per response. The template's
/// semantics (variables, checks) are defined in formstream-core's `receipt` module, which both
/// the gateway (at save time) and the receipts processor use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptAction {
    /// Key of a `PHONE` question of the same version.
    pub phone_question: String,
    /// MiniJinja source.
    pub template: String,
}

/// The slang action: index the answers to `text_questions`, each under the city the respondent
/// chose in `city_question` (a single- or multiple-choice question of the same form version).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slang {
    pub city_question: String,
    pub text_questions: Vec<String>,
}

/// The sheets action: one row per response in a Google spreadsheet (a local file without
/// credentials).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sheets {
    /// The spreadsheet to write to; `None` asks the exporter to create one (and to remember it).
    pub spreadsheet_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Choice {
    pub key: String,
    pub text: String,
}

/// One revision of one response: the value of the `responses` topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub response_id: String,
    pub form_id: String,
    pub form_version: i32,
    pub organisation: String,
    pub revision: i32,
    pub submitted_at: TimestampMillis,
    pub received_at: TimestampMillis,
    pub collector: Collector,
    pub answers: Vec<Answer>,
    pub metadata_json: String,
}

impl Response {
    pub fn answer(&self, key: &str) -> Option<&Answer> {
        self.answers.iter().find(|a| a.question_key == key)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Collector {
    pub id: String,
    pub phone: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    pub question_key: String,
    pub text: Option<String>,
    pub number: Option<f64>,
    pub choices: Vec<String>,
}

/// The validation outcome of one (response, revision): the value of the `response-flags` topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseFlag {
    pub response_id: String,
    pub form_id: String,
    pub form_version: i32,
    pub organisation: String,
    pub revision: i32,
    pub collector_id: String,
    pub collector_phone: Option<String>,
    pub status: FlagStatus,
    pub violations: Vec<Violation>,
    pub evaluated_at: TimestampMillis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FlagStatus {
    Clean,
    Flagged,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Violation {
    pub rule_id: String,
    pub message: String,
    pub question_keys: Vec<String>,
    pub error: Option<String>,
}
