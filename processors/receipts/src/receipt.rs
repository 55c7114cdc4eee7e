//! What a respondent receives: the receipt reference and the text.
//!
//! Invariant: both are pure functions of the response's identity, the form version and the answers,
//! never of the time of sending or the revision being handled, so every retry, redelivery and
//! reconciliation of one receipt looks for and sends the same text, and the text always carries
//! the reference that reconciliation searches for.

use formstream_schemas::{FormVersion, ReceiptAction, Response};

/// The receipt reference of a response, from its identity key
/// ([`formstream_core::identity::ResponseKey`]), e.g. `RC3F2A9C1B7E`: per response, not per
/// revision (one receipt per response), hash-based and ASCII (see [`formstream_notify::reference`]).
/// Hashing the whole identity keeps another organisation that reuses the response id from sending
/// a message that reconciliation would take for this one.
pub fn reference(response_key: &str) -> String {
    formstream_notify::reference::short("RC", response_key)
}

/// The SMS text: the form's template rendered over this response, followed by ` Ref <reference>`
/// when the template does not place `{{ receipt_ref }}` itself (reconciliation needs it in the
/// body). An error is permanent: this response cannot render.
pub fn text(
    action: &ReceiptAction,
    form_id: &str,
    version: &FormVersion,
    response: &Response,
    reference: &str,
) -> Result<String, String> {
    let mut text =
        crate::action::render(action, form_id, version, response, reference).map_err(|e| {
            format!(
                "the receipt template of form {form_id} v{} cannot render this response: {e}",
                version.version
            )
        })?;
    if !text.contains(reference) {
        if !text.is_empty() {
            text.push(' ');
        }
        text.push_str("Ref ");
        text.push_str(reference);
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use formstream_core::identity::ResponseKey;
    use formstream_schemas::fixtures::{self, text_answer};
    use formstream_schemas::{Question, QuestionType};

    use super::*;

    fn version(template: &str) -> FormVersion {
        FormVersion {
            title: "Household survey".into(),
            default_region: Some("IN".into()),
            receipt: Some(ReceiptAction {
                phone_question: "phone".into(),
                template: template.into(),
            }),
            ..fixtures::version(
                2,
                vec![Question {
                    text: "Name".into(),
                    ..fixtures::question("name", QuestionType::Text)
                }],
            )
        }
    }

    fn response(revision: i32) -> Response {
        Response {
            form_version: 2,
            revision,
            ..fixtures::response(
                "household",
                "0b9e4a44-0000-7000-8000-000000000001",
                vec![text_answer("name", "Priya")],
            )
        }
    }

    fn render(template: &str, revision: i32) -> String {
        let version = version(template);
        let response = response(revision);
        let reference = reference(&ResponseKey::of(&response).to_string());
        text(
            version.receipt.as_ref().unwrap(),
            "household",
            &version,
            &response,
            &reference,
        )
        .unwrap()
    }

    #[test]
    fn the_reference_is_placed_by_the_template_or_appended() {
        let reference = reference("acme/household/0b9e4a44-0000-7000-8000-000000000001");
        assert!(reference.starts_with("RC") && reference.len() == 12);
        // Another organisation's response with the same id has another reference.
        assert_ne!(
            reference,
            super::reference("globex/household/0b9e4a44-0000-7000-8000-000000000001")
        );
        assert_eq!(
            render(
                "Thanks {{ answers.name }}! {{ form.title }}, ref {{ receipt_ref }}.",
                0
            ),
            format!("Thanks Priya! Household survey, ref {reference}.")
        );
        assert_eq!(
            render("Thanks {{ answers.name }}.", 0),
            format!("Thanks Priya. Ref {reference}")
        );
        // The same receipt for every revision: one receipt per response.
        assert_eq!(
            render("Thanks {{ answers.name }}.", 0),
            render("Thanks {{ answers.name }}.", 3)
        );
    }

    #[test]
    fn a_template_that_cannot_render_says_which_form() {
        let version = version("{{ answers.name + 1 }}");
        let error = text(
            version.receipt.as_ref().unwrap(),
            "household",
            &version,
            &response(0),
            "RC1",
        )
        .unwrap_err();
        assert!(error.contains("form household v2"), "{error}");
    }
}
