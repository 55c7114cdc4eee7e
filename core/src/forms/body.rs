//! Forms as the HTTP API takes and shows them: the body of `POST /v1/forms` and `PUT
//! /v1/forms/{id}`, and the version `GET` shows.
//!
//! Invariant: what [`FormView::of`] shows for a stored version is a body that builds that same
//! version again (a client can `PUT` back what it fetched; `build.rs` tests it).

use formstream_schemas::{Choice, Form, FormVersion, Question, QuestionType};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::forms::FormActions;
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

impl From<&QuestionBody> for Question {
    fn from(q: &QuestionBody) -> Self {
        Question {
            key: q.key.clone(),
            text: q.text.clone(),
            kind: q.kind.into(),
            required: q.required,
            choices: (q.choices.iter())
                .map(|c| Choice {
                    key: c.key.clone(),
                    text: c.text.clone(),
                })
                .collect(),
            max_length: q.max_length,
        }
    }
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
    /// The form's business rules: the validate processor's action
    /// (processors/validate/README.md).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Vec<Object>>)]
    pub rules: Option<Value>,
    /// Who is told about flagged responses: the notify-collectors processor's action
    /// (processors/notify-collectors/README.md).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Object>)]
    pub notify: Option<Value>,
    /// The SMS receipt to the respondent: the receipts processor's action
    /// (processors/receipts/README.md); none when absent.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub receipt: Option<Value>,
    /// The slang processor's action (processors/slang/README.md).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub slang: Option<Value>,
    /// The sheets processor's action (processors/sheets/README.md).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub sheets: Option<Value>,
    /// The actions processors declare themselves, by name ([`super::actions`]); each is checked
    /// by its processor's check when the form is saved.
    #[serde(default)]
    pub actions: serde_json::Map<String, serde_json::Value>,
}

impl FormBody {
    /// The top-level fields that are processors' actions (the public JSON had them before
    /// `actions`), with their settings when given, in the order their problems are listed. Their
    /// owners check and store them ([`FormActions::build_version`]).
    pub fn fields(&self) -> impl Iterator<Item = (&'static str, &Value)> {
        let fields = [
            ("rules", &self.rules),
            ("receipt", &self.receipt),
            ("notify", &self.notify),
            ("slang", &self.slang),
            ("sheets", &self.sheets),
        ];
        (fields.into_iter()).filter_map(|(name, settings)| Some((name, settings.as_ref()?)))
    }
}

/// A field that is given, `null` included (which its owner's type then refuses, as it did when the
/// field was typed here): absent is `None`, `null` is `Some(Value::Null)`.
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
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
    /// Shown as validate shows it: always when it is registered (as the binary registers every
    /// processor).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
    pub rules: Option<Value>,
    /// Shown as its owner shows it: always when notify-collectors is registered (as the binary
    /// registers every processor).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub notify: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub receipt: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub slang: Option<Value>,
    #[schema(value_type = Option<Object>)]
    pub sheets: Option<Value>,
    #[serde(skip_serializing_if = "serde_json::Map::is_empty")]
    pub actions: serde_json::Map<String, serde_json::Value>,
    pub created_at: String,
    pub updated_at: String,
}

impl FormView {
    /// The view of `version` of `form`, its top-level action fields as their owners in
    /// `actions` show them.
    pub fn of(form: &Form, version: &FormVersion, actions: &FormActions) -> Self {
        let mut fields = actions.show(version);
        FormView {
            id: form.id.clone(),
            organisation: form.organisation.clone(),
            version: version.version,
            title: version.title.clone(),
            description: version.description.clone(),
            default_region: version.default_region.clone(),
            questions: (version.questions.iter())
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
            rules: fields.remove("rules"),
            notify: fields.remove("notify"),
            receipt: fields.remove("receipt"),
            slang: fields.remove("slang"),
            sheets: fields.remove("sheets"),
            actions: serde_json::from_str(&version.actions_json).unwrap_or_default(),
            created_at: rfc3339(form.created_at),
            updated_at: rfc3339(version.created_at),
        }
    }
}
