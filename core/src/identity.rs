//! Identity across organisations (docs/design.md, promise 8): a form is (organisation, form id)
//! and a response is (organisation, form id, response id). Two organisations may each have a form
//! `household`, and their clients choose response ids freely, so a form id or a response id alone
//! names nothing downstream: every key, ledger entry, index term, spreadsheet and file is built
//! from the whole identity, here.
//!
//! Keys are the parts joined by `/`, organisation first: `acme/household` for a form,
//! `acme/household/0b9e...` for a response. Form ids (`[A-Za-z0-9][A-Za-z0-9_-]*`, checked by the
//! gateway) and response ids (UUIDs, checked by the gateway) never contain `/`; an organisation
//! name may. So a key is read from the right, and two different identities never give the same
//! key.
//!
//! Invariant: a key built here depends on every part of the identity, so nothing one
//! organisation sends can name an entry of another's.

use std::fmt;

use formstream_schemas::{Form, Response};

/// What joins the parts of a key.
pub const SEPARATOR: char = '/';

/// The record header naming the organisation of a response or flag record, beside its
/// `response_id` header (the gateway and validate set both): the runtime orders records by
/// organisation and response id without decoding them.
pub const ORGANISATION_HEADER: &str = "organisation";

/// A form's identity: the organisation that owns it and its id within that organisation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FormKey {
    pub organisation: String,
    pub form_id: String,
}

impl FormKey {
    pub fn new(organisation: impl Into<String>, form_id: impl Into<String>) -> Self {
        FormKey {
            organisation: organisation.into(),
            form_id: form_id.into(),
        }
    }

    /// The identity of `form`.
    pub fn of(form: &Form) -> Self {
        FormKey::new(&form.organisation, &form.id)
    }

    /// The identity of the form `response` answers.
    pub fn of_response(response: &Response) -> Self {
        FormKey::new(&response.organisation, &response.form_id)
    }

    /// Reads a key written by [`FormKey`]'s `Display` (the forms topic's record keys):
    /// (organisation, form id). `None` for a key without the separator: a form id alone, as the
    /// forms topic was keyed before identities were per organisation.
    pub fn parse(key: &str) -> Option<(&str, &str)> {
        let (organisation, form_id) = key.rsplit_once(SEPARATOR)?;
        (!organisation.is_empty() && !form_id.is_empty()).then_some((organisation, form_id))
    }
}

/// `<organisation>/<form id>`: the forms topic's record key.
impl fmt::Display for FormKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{SEPARATOR}{}", self.organisation, self.form_id)
    }
}

/// A response's identity, borrowed from the record that carries it; its `Display` is the key
/// every per-response entry downstream is built on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ResponseKey<'a> {
    pub organisation: &'a str,
    pub form_id: &'a str,
    pub response_id: &'a str,
}

impl<'a> ResponseKey<'a> {
    /// The identity of `response`.
    pub fn of(response: &'a Response) -> Self {
        ResponseKey {
            organisation: &response.organisation,
            form_id: &response.form_id,
            response_id: &response.response_id,
        }
    }
}

/// `<organisation>/<form id>/<response id>`.
impl fmt::Display for ResponseKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}{SEPARATOR}{}{SEPARATOR}{}",
            self.organisation, self.form_id, self.response_id
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_the_whole_identity_and_read_back_from_the_right() {
        let key = FormKey::new("acme", "household");
        assert_eq!(key.to_string(), "acme/household");
        assert_eq!(
            FormKey::parse("acme/household"),
            Some(("acme", "household"))
        );
        // An organisation may hold the separator; a form id may not.
        let key = FormKey::new("acme/india", "household");
        assert_eq!(
            FormKey::parse(&key.to_string()),
            Some(("acme/india", "household"))
        );
        // A bare form id is an old key.
        assert_eq!(FormKey::parse("household"), None);
        assert_eq!(FormKey::parse("/household"), None);
        assert_eq!(FormKey::parse("acme/"), None);
    }

    #[test]
    fn the_same_response_id_in_two_organisations_is_two_keys() {
        let a = ResponseKey {
            organisation: "acme",
            form_id: "household",
            response_id: "0b9e4a44-0000-7000-8000-000000000001",
        };
        let b = ResponseKey {
            organisation: "globex",
            ..a
        };
        assert_eq!(
            a.to_string(),
            "acme/household/0b9e4a44-0000-7000-8000-000000000001"
        );
        assert_ne!(a.to_string(), b.to_string());
        let c = ResponseKey {
            form_id: "census",
            ..a
        };
        assert_ne!(a.to_string(), c.to_string());
    }
}
