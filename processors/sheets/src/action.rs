//! The sheets processor's form action, `"sheets": {"spreadsheet_id": "..."}` or
//! `"sheets": {"create": true}` (a top-level field of a form; the wire record's `sheets`): export
//! each response as a row of a Google spreadsheet, either the one named or one the exporter
//! creates; exactly one.
//!
//! Invariant: a stored action is exactly one of a well-formed spreadsheet id or `create: true`
//! (the exporter trusts it, and a typo in an id is better refused at save time than dead-lettered
//! for every response).

use std::sync::{Arc, LazyLock};

use formstream_core::forms::{Action, FormAction, FormBody};
use formstream_core::problem::FieldProblem;
use formstream_schemas::{FormVersion, Sheets};
use regex::Regex;
use serde::{Deserialize, Serialize};

/// The action's name: the form's top-level field.
pub const NAME: &str = "sheets";

/// Google's spreadsheet ids (the part of the URL after `/d/`) are URL-safe base64, 44 characters
/// today; the range leaves room for other lengths without accepting anything that is not an id.
static SPREADSHEET_ID: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z0-9_-]{10,128}$").expect("valid regex"));

/// The sheets action as the forms API takes and shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SheetsBody {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spreadsheet_id: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub create: bool,
}

/// The action, for the gateway's registry: stored in, and shown from, the record's `sheets`.
pub fn action() -> Arc<dyn FormAction> {
    Arc::new(Action::field(NAME, check, store, show))
}

fn store(body: SheetsBody, version: &mut FormVersion) {
    version.sheets = Some(Sheets {
        spreadsheet_id: body.spreadsheet_id,
    });
}

fn show(version: &FormVersion) -> Option<SheetsBody> {
    let sheets = version.sheets.as_ref()?;
    Some(SheetsBody {
        spreadsheet_id: sheets.spreadsheet_id.clone(),
        create: sheets.spreadsheet_id.is_none(),
    })
}

/// The problem of `sheets`, with its pointer relative to the action.
fn check(sheets: &SheetsBody, _form: &FormBody) -> Vec<FieldProblem> {
    match (&sheets.spreadsheet_id, sheets.create) {
        (Some(_), true) => vec![FieldProblem::new(
            "",
            "conflicting",
            "give either spreadsheet_id or create: true, not both",
        )],
        (None, false) => vec![FieldProblem::new(
            "",
            "required",
            "give spreadsheet_id (an existing spreadsheet shared with the exporter) or create: true",
        )],
        (Some(id), false) if !SPREADSHEET_ID.is_match(id) => vec![FieldProblem::new(
            "/spreadsheet_id",
            "invalid_spreadsheet_id",
            "a spreadsheet id is the part of its URL after /d/: 10 to 128 letters, digits, '-' or '_'",
        )],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use formstream_core::forms::FormActions;

    use super::*;

    /// `json` built as a form with this action registered.
    fn build(json: serde_json::Value) -> Result<FormVersion, Vec<FieldProblem>> {
        let body: FormBody = serde_json::from_value(json).expect("valid body shape");
        FormActions::new([action()]).build_version(&body, 1, 0)
    }

    #[test]
    fn a_sheets_action_round_trips_and_bad_ones_point_at_the_problem() {
        let questions = serde_json::json!([{"key": "name", "text": "Name", "type": "text"}]);
        for sheets in [
            serde_json::json!({"spreadsheet_id": "1BxiMVs0XRA5nFMdKvBdBZjgmUUqptlbs74OgvE2upms"}),
            serde_json::json!({"create": true}),
        ] {
            let good = serde_json::json!({"title": "t", "questions": questions, "sheets": sheets});
            let version = build(good).expect("valid");
            assert!(version.sheets.is_some());
            let (shown, rebuilt) = FormActions::new([action()]).shown_and_rebuilt(&version);
            assert_eq!(shown["sheets"], sheets);
            assert_eq!(rebuilt, Ok(version));
        }
        for (sheets, pointer, code) in [
            (serde_json::json!({}), "/sheets", "required"),
            (serde_json::json!({"create": false}), "/sheets", "required"),
            (
                serde_json::json!({"spreadsheet_id": "1BxiMVs0XRA5nFMdKvBdBZjgmUUqptlbs74OgvE2upms", "create": true}),
                "/sheets",
                "conflicting",
            ),
            (
                serde_json::json!({"spreadsheet_id": "https://docs.google.com/x"}),
                "/sheets/spreadsheet_id",
                "invalid_spreadsheet_id",
            ),
        ] {
            let bad = serde_json::json!({"title": "t", "questions": questions, "sheets": sheets});
            let problems = build(bad).expect_err("invalid");
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert_eq!(
                (problems[0].pointer.as_str(), problems[0].code),
                (pointer, code)
            );
        }
    }
}
