//! Forms as the HTTP API takes and shows them: the body of `POST /v1/forms` and `PUT
//! /v1/forms/{id}`, and the version `GET` shows.
//!
//! Invariant: what [`FormView::of`] shows for a stored version is a body that builds that same
//! version again (a client can `PUT` back what it fetched; `build.rs` tests it).

use formstream_schemas::{Form, FormVersion, QuestionType};
use serde::{Deserialize, Serialize};

use crate::receipt::ReceiptBody;
use crate::time::rfc3339;

/// A question as the API takes and shows it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuestionBody {
    pub key: String,
    pub text: String,
    #[serde(rename = "type")]
    pub kind: ApiQuestionType,
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub choices: Vec<ChoiceBody>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length: Option<i32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ApiQuestionType {
    Text,
    SingleChoice,
    MultipleChoice,
    Number,
    Phone,
}

impl From<ApiQuestionType> for QuestionType {
    fn from(t: ApiQuestionType) -> Self {
        match t {
            ApiQuestionType::Text => QuestionType::Text,
            ApiQuestionType::SingleChoice => QuestionType::SingleChoice,
            ApiQuestionType::MultipleChoice => QuestionType::MultipleChoice,
            ApiQuestionType::Number => QuestionType::Number,
            ApiQuestionType::Phone => QuestionType::Phone,
        }
    }
}

impl From<QuestionType> for ApiQuestionType {
    fn from(t: QuestionType) -> Self {
        match t {
            QuestionType::Text => ApiQuestionType::Text,
            QuestionType::SingleChoice => ApiQuestionType::SingleChoice,
            QuestionType::MultipleChoice => ApiQuestionType::MultipleChoice,
            QuestionType::Number => ApiQuestionType::Number,
            QuestionType::Phone => ApiQuestionType::Phone,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChoiceBody {
    pub key: String,
    pub text: String,
}

/// A business rule as the API takes and shows it: CEL in `expression`, or an XLSForm
/// `constraint` that the gateway translates to CEL (and then shows both).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleBody {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expression: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub constraint: Option<String>,
    pub message: String,
    #[serde(default)]
    pub question_keys: Vec<String>,
}

/// Who is told about flagged responses.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NotifyBody {
    #[serde(default)]
    pub sms_collector: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
}

/// The slang action: which text answers the slang processor indexes, and the question whose
/// answer is the respondent's city. The city question may be a single or a multiple choice (a
/// respondent who picks several cities is counted in each).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SlangBody {
    pub city_question: String,
    pub text_questions: Vec<String>,
}

/// The sheets action: export each response as a row of a Google spreadsheet, either the one named
/// (`{"spreadsheet_id": "..."}`) or one the exporter creates (`{"create": true}`); exactly one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SheetsBody {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spreadsheet_id: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub create: bool,
}

/// The body of `POST /v1/forms` and `PUT /v1/forms/{id}`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FormBody {
    /// Only on create; generated when absent.
    #[serde(default)]
    pub id: Option<String>,
    pub title: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub default_region: Option<String>,
    pub questions: Vec<QuestionBody>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    pub rules: Vec<RuleBody>,
    #[serde(default)]
    pub notify: NotifyBody,
    /// The SMS receipt to the respondent (the receipts processor); none when absent.
    #[serde(default)]
    pub receipt: Option<ReceiptBody>,
    #[serde(default)]
    pub slang: Option<SlangBody>,
    #[serde(default)]
    pub sheets: Option<SheetsBody>,
    /// The actions processors declare themselves, by name ([`super::actions`]); each is checked
    /// by its processor's check when the form is saved.
    #[serde(default)]
    pub actions: serde_json::Map<String, serde_json::Value>,
}

/// A form version as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FormView {
    pub id: String,
    pub organisation: String,
    pub version: i32,
    pub title: String,
    pub description: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_region: Option<String>,
    pub questions: Vec<QuestionBody>,
    pub metadata: serde_json::Value,
    pub rules: Vec<RuleBody>,
    pub notify: NotifyBody,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receipt: Option<ReceiptBody>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slang: Option<SlangBody>,
    pub sheets: Option<SheetsBody>,
    #[serde(skip_serializing_if = "serde_json::Map::is_empty")]
    pub actions: serde_json::Map<String, serde_json::Value>,
    pub created_at: String,
    pub updated_at: String,
}

impl FormView {
    pub fn of(form: &Form, version: &FormVersion) -> Self {
        FormView {
            id: form.id.clone(),
            organisation: form.organisation.clone(),
            version: version.version,
            title: version.title.clone(),
            description: version.description.clone(),
            default_region: version.default_region.clone(),
            questions: version
                .questions
                .iter()
                .map(|q| QuestionBody {
                    key: q.key.clone(),
                    text: q.text.clone(),
                    kind: q.kind.into(),
                    required: q.required,
                    choices: q
                        .choices
                        .iter()
                        .map(|c| ChoiceBody {
                            key: c.key.clone(),
                            text: c.text.clone(),
                        })
                        .collect(),
                    max_length: q.max_length,
                })
                .collect(),
            metadata: serde_json::from_str(&version.metadata_json)
                .unwrap_or_else(|_| serde_json::Value::Object(Default::default())),
            rules: version
                .rules
                .iter()
                .map(|r| RuleBody {
                    id: r.id.clone(),
                    expression: Some(r.expression.clone()),
                    constraint: r.constraint.clone(),
                    message: r.message.clone(),
                    question_keys: r.question_keys.clone(),
                })
                .collect(),
            notify: NotifyBody {
                sms_collector: version.notify.sms_collector,
                webhook_url: version.notify.webhook_url.clone(),
            },
            receipt: version.receipt.as_ref().map(ReceiptBody::from),
            slang: version.slang.as_ref().map(|s| SlangBody {
                city_question: s.city_question.clone(),
                text_questions: s.text_questions.clone(),
            }),
            sheets: version.sheets.as_ref().map(|s| SheetsBody {
                spreadsheet_id: s.spreadsheet_id.clone(),
                create: s.spreadsheet_id.is_none(),
            }),
            actions: serde_json::from_str(&version.actions_json).unwrap_or_default(),
            created_at: rfc3339(form.created_at),
            updated_at: rfc3339(version.created_at),
        }
    }
}
