//! The retry cache's digest of a submission: what tells a retry of the same submission from a
//! different one that reuses its response id.
//!
//! Invariant: two bodies digest alike exactly when they say the same thing to the same form
//! (field order and white space do not count), whatever their JSON text.

use std::fmt::{self, Write as _};

use formstream_core::responses::ResponseBody;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::idempotency::Digest;

/// A digest of what the client said to which form, to tell a retry of the same submission
/// from a different submission that reuses its id. A batch item and a single request of the
/// same submission digest alike (the form comes from the argument, never from the body).
///
/// SHA-256 of an unambiguous encoding of the parsed body (see [`Canonical`]), not of its JSON
/// text: field order and white space do not count, content does. It lives only in this
/// process's retry cache, so the encoding may change between versions.
pub fn digest(body: &ResponseBody, form_id: &str) -> Digest {
    let mut canonical = Canonical(Sha256::new());
    canonical.text(form_id);
    canonical.optional_text(body.response_id.as_deref());
    match body.revision {
        None => canonical.tag(b'-'),
        Some(revision) => {
            canonical.tag(b'r');
            canonical.0.update(revision.to_le_bytes());
        }
    }
    canonical.optional_text(body.submitted_at.as_deref());
    canonical.text(&body.collector.id);
    canonical.optional_text(body.collector.phone.as_deref());
    canonical.object(body.answers.iter());
    match &body.metadata {
        None => canonical.tag(b'-'),
        Some(metadata) => canonical.object(metadata.iter()),
    }
    canonical.0.finalize().into()
}

/// Writes values into a hasher so that different values never write the same bytes: each is
/// tagged with its kind, strings and collections carry their length, and a number its JSON text
/// with an end mark (so `1` and `1.0` differ, as they do in JSON). Cheaper than serialising the
/// body to JSON and hashing the text, which escaped every string on the way.
struct Canonical(Sha256);

impl Canonical {
    fn tag(&mut self, tag: u8) {
        self.0.update([tag]);
    }

    fn length(&mut self, tag: u8, length: usize) {
        self.tag(tag);
        self.0.update((length as u64).to_le_bytes());
    }

    fn text(&mut self, text: &str) {
        self.length(b's', text.len());
        self.0.update(text.as_bytes());
    }

    fn optional_text(&mut self, text: Option<&str>) {
        match text {
            None => self.tag(b'-'),
            Some(text) => self.text(text),
        }
    }

    /// Entries in the map's own order, which is by key: answers are a `BTreeMap`, and so is
    /// serde_json's `Map` without its `preserve_order` feature (a test holds both to it).
    fn object<'a>(&mut self, entries: impl ExactSizeIterator<Item = (&'a String, &'a Value)>) {
        self.length(b'{', entries.len());
        for (key, value) in entries {
            self.text(key);
            self.value(value);
        }
    }

    fn value(&mut self, value: &Value) {
        match value {
            Value::Null => self.tag(b'n'),
            Value::Bool(false) => self.tag(b'f'),
            Value::Bool(true) => self.tag(b't'),
            Value::Number(number) => {
                self.tag(b'#');
                // Digits, sign, '.', 'e' and '+': never the end mark.
                let _ = write!(self, "{number}");
                self.tag(b';');
            }
            Value::String(text) => self.text(text),
            Value::Array(items) => {
                self.length(b'[', items.len());
                for item in items {
                    self.value(item);
                }
            }
            Value::Object(map) => self.object(map.iter()),
        }
    }
}

impl fmt::Write for Canonical {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        self.0.update(text.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn digests_ignore_field_order_but_not_content() {
        let a: ResponseBody =
            serde_json::from_str(r#"{"collector":{"id":"c"},"answers":{"a":1,"b":2}}"#).expect("a");
        let b: ResponseBody =
            serde_json::from_str(r#"{"answers":{"b":2,"a":1},"collector":{"id":"c"}}"#).expect("b");
        let c: ResponseBody =
            serde_json::from_str(r#"{"answers":{"b":3,"a":1},"collector":{"id":"c"}}"#).expect("c");
        assert_eq!(digest(&a, "f"), digest(&b, "f"));
        assert_ne!(digest(&a, "f"), digest(&c, "f"));
        assert_ne!(
            digest(&a, "f"),
            digest(&a, "g"),
            "the form is part of the submission"
        );
        let item: ResponseBody = serde_json::from_str(
            r#"{"form_id":"f","collector":{"id":"c"},"answers":{"a":1,"b":2}}"#,
        )
        .expect("item");
        assert_eq!(
            digest(&item, "f"),
            digest(&a, "f"),
            "a batch item digests like the single request"
        );
    }

    #[test]
    fn different_content_never_digests_alike() {
        let of = |json: &str| digest(&serde_json::from_str(json).expect(json), "f");
        // Pairs that a careless encoding (no kinds, lengths or end marks) would run together.
        let bodies = [
            r#"{"collector":{"id":"c"},"answers":{}}"#,
            r#"{"collector":{"id":"c"},"answers":{"a":"bc"}}"#,
            r#"{"collector":{"id":"c"},"answers":{"ab":"c"}}"#,
            r#"{"collector":{"id":"c"},"answers":{"a":["b","c"]}}"#,
            r#"{"collector":{"id":"c"},"answers":{"a":["bc"]}}"#,
            r#"{"collector":{"id":"c"},"answers":{"a":[["b"],"c"]}}"#,
            r#"{"collector":{"id":"c"},"answers":{"a":1}}"#,
            r#"{"collector":{"id":"c"},"answers":{"a":1.0}}"#,
            r#"{"collector":{"id":"c"},"answers":{"a":"1"}}"#,
            r#"{"collector":{"id":"c"},"answers":{"a":11}}"#,
            r#"{"collector":{"id":"c"},"answers":{"a":null}}"#,
            r#"{"collector":{"id":"c"},"answers":{"a":""}}"#,
            r#"{"collector":{"id":"c"},"answers":{"a":false}}"#,
            r#"{"collector":{"id":"c"},"answers":{"a":{}}}"#,
            r#"{"collector":{"id":"c"},"answers":{"a":[]}}"#,
            r#"{"collector":{"id":"c"},"answers":{"a":{"b":"c"}}}"#,
            r#"{"collector":{"id":"c"},"answers":{},"metadata":{}}"#,
            r#"{"collector":{"id":"c","phone":""},"answers":{}}"#,
            r#"{"collector":{"id":""},"answers":{}}"#,
            r#"{"response_id":"c","collector":{"id":""},"answers":{}}"#,
            r#"{"submitted_at":"c","collector":{"id":""},"answers":{}}"#,
            r#"{"revision":0,"collector":{"id":"c"},"answers":{}}"#,
            r#"{"revision":1,"collector":{"id":"c"},"answers":{}}"#,
        ];
        let digests: HashSet<[u8; 32]> = bodies.iter().map(|b| of(b)).collect();
        assert_eq!(digests.len(), bodies.len());
        assert_eq!(
            of(r#"{"collector":{"id":"c"},"answers":{},"metadata":{"a":1,"b":{"c":2,"d":3}}}"#),
            of(r#"{"collector":{"id":"c"},"answers":{},"metadata":{"b":{"d":3,"c":2},"a":1}}"#),
            "metadata's order does not count either"
        );
        assert_eq!(of(bodies[7]), of(bodies[7]), "and the same, alike");
    }
}
