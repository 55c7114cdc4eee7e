//! One dead letter as read from its topic: the record as it was dead-lettered (key, value,
//! headers), its value decoded, and what became of it; and how it is shown to an operator.
//!
//! Invariant: nothing shown holds a phone number in full. Every string of the decoded value and
//! every header value goes through [`scrub_phones`] (phones are stored in E.164), so a collector's
//! or a respondent's number never leaves through `show`, `list` or the HTTP API.

pub use formstream_core::redact::scrub_phones;
use formstream_core::time::rfc3339;
use formstream_schemas::{Codec, CodecError, Response, ResponseFlag};
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::dlq::{Kind, headers};
use crate::processor::ORDERING_HEADER;
use crate::redrive::LetterId;

/// A dead letter, as read from its topic, and its state.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub id: LetterId,
    /// The dead letter's Kafka timestamp (when it was dead-lettered), ms since the epoch.
    pub timestamp_ms: Option<i64>,
    /// The source record's key, value and headers (the `formstream.dlq.*` ones included), as
    /// they are on the dead-letter topic.
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub record: Decoded,
    pub state: State,
}

/// The dead letter's value, decoded with the project's schemas.
#[derive(Debug, Clone)]
pub enum Decoded {
    Response(Box<Response>),
    Flag(Box<ResponseFlag>),
    /// Not a record of a known schema (a poison record, or no value): why.
    Undecodable(String),
}

/// The fields every decodable value has: whose it is, and which response revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordSummary<'a> {
    pub kind: &'static str,
    pub organisation: &'a str,
    pub form_id: &'a str,
    pub form_version: i32,
    pub response_id: &'a str,
    pub revision: i32,
}

impl Decoded {
    /// Decodes a dead letter's value: a response (most processors' source) or a flag (the
    /// collector notifier's). Fails only when the schema registry could not be asked (try
    /// again later); a value that is not a record of a known schema is [`Decoded::Undecodable`].
    pub async fn of(codec: &Codec, payload: Option<&[u8]>) -> Result<Decoded, CodecError> {
        let Some(payload) = payload else {
            return Ok(Decoded::Undecodable(
                "the record has no value (a tombstone)".to_owned(),
            ));
        };
        let as_response = match codec.decode::<Response>(payload).await {
            Ok(response) => return Ok(Decoded::Response(Box::new(response))),
            Err(error) if error.is_retriable() => return Err(error),
            Err(error) => error,
        };
        match codec.decode::<ResponseFlag>(payload).await {
            Ok(flag) => Ok(Decoded::Flag(Box::new(flag))),
            Err(error) if error.is_retriable() => Err(error),
            Err(_) => Ok(Decoded::Undecodable(as_response.to_string())),
        }
    }

    /// Organisation, form and response of a decoded value; `None` for an undecodable one.
    pub fn summary(&self) -> Option<RecordSummary<'_>> {
        match self {
            Decoded::Response(r) => Some(RecordSummary {
                kind: "response",
                organisation: &r.organisation,
                form_id: &r.form_id,
                form_version: r.form_version,
                response_id: &r.response_id,
                revision: r.revision,
            }),
            Decoded::Flag(f) => Some(RecordSummary {
                kind: "flag",
                organisation: &f.organisation,
                form_id: &f.form_id,
                form_version: f.form_version,
                response_id: &f.response_id,
                revision: f.revision,
            }),
            Decoded::Undecodable(_) => None,
        }
    }

    /// The whole value as JSON, phones scrubbed; `None` for an undecodable one.
    fn value(&self) -> Option<Value> {
        let mut value = match self {
            Decoded::Response(r) => serde_json::to_value(r).ok()?,
            Decoded::Flag(f) => serde_json::to_value(f).ok()?,
            Decoded::Undecodable(_) => return None,
        };
        scrub_value(&mut value);
        Some(value)
    }
}

/// What became of a dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Neither re-driven nor discarded yet.
    Pending,
    /// A copy went to the re-drive topic.
    Redriven,
    /// Dropped by an operator.
    Discarded,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Redriven => "redriven",
            Status::Discarded => "discarded",
        }
    }
}

/// A dead letter's state: pending, or what an operator did and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    pub status: Status,
    pub at_ms: Option<i64>,
    pub by: Option<String>,
}

impl State {
    pub const PENDING: State = State {
        status: Status::Pending,
        at_ms: None,
        by: None,
    };
}

impl DeadLetter {
    /// The value of the first header named `name`, if it is UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(header, _)| header == name)
            .and_then(|(_, value)| std::str::from_utf8(value).ok())
    }

    fn header_i64(&self, name: &str) -> Option<i64> {
        self.header(name)?.trim().parse().ok()
    }

    /// Why it was dead-lettered.
    pub fn kind(&self) -> Option<Kind> {
        Kind::parse(self.header(headers::ERROR_KIND)?)
    }

    /// The response id: the decoded value's, or the `response_id` header of a record that could
    /// not be decoded.
    pub fn response_id(&self) -> Option<String> {
        match self.record.summary() {
            Some(summary) => Some(summary.response_id.to_owned()),
            None => self.header(ORDERING_HEADER).map(str::to_owned),
        }
    }

    /// The organisation the record belongs to; `None` when it cannot be decoded.
    pub fn organisation(&self) -> Option<&str> {
        self.record.summary().map(|s| s.organisation)
    }

    /// When it was dead-lettered: its last attempt, or else its Kafka timestamp.
    pub fn dead_lettered_ms(&self) -> i64 {
        self.header_i64(headers::LAST_ATTEMPT_MS)
            .or(self.timestamp_ms)
            .unwrap_or(0)
    }

    /// How many times the record had been re-driven when it was dead-lettered (0: never).
    pub fn redrive_count(&self) -> u32 {
        self.header(headers::REDRIVE_COUNT)
            .and_then(|count| count.trim().parse().ok())
            .unwrap_or(0)
    }

    /// The topic, partition and offset it was consumed from.
    pub fn source(&self) -> (Option<&str>, Option<i32>, Option<i64>) {
        (
            self.header(headers::TOPIC),
            self.header_i64(headers::PARTITION)
                .and_then(|p| i32::try_from(p).ok()),
            self.header_i64(headers::OFFSET),
        )
    }

    /// What `list` shows: the record's summary and the dead-letter headers.
    pub fn summary_json(&self, processor: &str) -> Value {
        let (topic, partition, offset) = self.source();
        let record = match (&self.record, self.record.summary()) {
            (_, Some(s)) => json!({
                "type": s.kind,
                "organisation": s.organisation,
                "form_id": s.form_id,
                "form_version": s.form_version,
                "response_id": s.response_id,
                "revision": s.revision,
            }),
            (Decoded::Undecodable(reason), None) => json!({
                "type": "undecodable",
                "response_id": self.header(ORDERING_HEADER),
                "error": scrub_phones(reason),
            }),
            _ => Value::Null,
        };
        let time = |name: &str| self.header_i64(name).map(rfc3339);
        let mut summary = json!({
            "id": self.id,
            "processor": processor,
            "status": self.state.status,
            "dead_lettered_at": rfc3339(self.dead_lettered_ms()),
            "error": {
                "kind": self.header(headers::ERROR_KIND),
                "message": self.header(headers::ERROR_MESSAGE).map(scrub_phones),
                "attempts": self.header_i64(headers::ATTEMPTS),
                "first_attempt_at": time(headers::FIRST_ATTEMPT_MS),
                "last_attempt_at": time(headers::LAST_ATTEMPT_MS),
            },
            "source": {"topic": topic, "partition": partition, "offset": offset},
            "redrive_count": self.redrive_count(),
            "record": record,
            "headers": self.headers_json(),
        });
        if self.state.status != Status::Pending
            && let Some(object) = summary.as_object_mut()
        {
            object.insert(
                "handled".to_owned(),
                json!({
                    "at": self.state.at_ms.map(rfc3339),
                    "by": self.state.by,
                }),
            );
        }
        summary
    }

    /// What `show` shows: the summary, the key, and the whole decoded value (phones scrubbed).
    pub fn full_json(&self, processor: &str) -> Value {
        let mut full = self.summary_json(processor);
        if let Some(object) = full.as_object_mut() {
            object.insert(
                "key".to_owned(),
                json!(
                    self.key
                        .as_deref()
                        .map(|k| scrub_phones(&String::from_utf8_lossy(k)))
                ),
            );
            object.insert(
                "value_bytes".to_owned(),
                json!(self.payload.as_ref().map_or(0, Vec::len)),
            );
            object.insert(
                "value".to_owned(),
                self.record.value().unwrap_or(Value::Null),
            );
        }
        full
    }

    /// Every header, by name (the first of duplicates), values as text, phones scrubbed.
    fn headers_json(&self) -> Value {
        let mut object = Map::new();
        for (name, value) in &self.headers {
            object
                .entry(name.clone())
                .or_insert_with(|| json!(scrub_phones(&String::from_utf8_lossy(value))));
        }
        Value::Object(object)
    }
}

/// Scrubs every string in `value`, recursively.
fn scrub_value(value: &mut Value) {
    match value {
        Value::String(text) => {
            let scrubbed = scrub_phones(text);
            if scrubbed != *text {
                *text = scrubbed;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(scrub_value),
        Value::Object(fields) => fields.values_mut().for_each(scrub_value),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use formstream_schemas::{Answer, Collector};

    use super::*;

    fn letter(record: Decoded) -> DeadLetter {
        DeadLetter {
            id: LetterId {
                partition: 1,
                offset: 4,
            },
            timestamp_ms: Some(1_000),
            key: Some(b"household".to_vec()),
            payload: Some(vec![1, 2, 3]),
            headers: vec![
                ("response_id".to_owned(), b"r-1".to_vec()),
                (headers::ERROR_KIND.to_owned(), b"permanent".to_vec()),
                (
                    headers::ERROR_MESSAGE.to_owned(),
                    b"Twilio refused +919876543210".to_vec(),
                ),
                (headers::LAST_ATTEMPT_MS.to_owned(), b"2000".to_vec()),
                (headers::PARTITION.to_owned(), b"3".to_vec()),
            ],
            record,
            state: State::PENDING,
        }
    }

    #[test]
    fn shown_values_and_headers_carry_no_phone_in_full() {
        let response = Response {
            response_id: "r-1".to_owned(),
            form_id: "household".to_owned(),
            form_version: 1,
            organisation: "acme".to_owned(),
            revision: 0,
            submitted_at: 0,
            received_at: 0,
            collector: Collector {
                id: "c-1".to_owned(),
                phone: Some("+14155550123".to_owned()),
            },
            answers: vec![Answer {
                question_key: "phone".to_owned(),
                text: Some("+447700900123".to_owned()),
                number: None,
                choices: vec![],
            }],
            metadata_json: "{}".to_owned(),
        };
        let shown = letter(Decoded::Response(Box::new(response)))
            .full_json("receipts")
            .to_string();
        for number in ["4155550123", "7700900123", "9876543210"] {
            assert!(!shown.contains(number), "{number} shown in {shown}");
        }
        assert!(shown.contains("+44******0123"), "{shown}");
    }

    #[test]
    fn the_summary_names_the_record_and_the_error() {
        let summary = letter(Decoded::Undecodable("garbage".to_owned())).summary_json("journal");
        assert_eq!(summary["id"], "1-4");
        assert_eq!(summary["status"], "pending");
        assert_eq!(summary["record"]["type"], "undecodable");
        assert_eq!(summary["record"]["response_id"], "r-1");
        assert_eq!(summary["error"]["kind"], "permanent");
        assert_eq!(summary["source"]["partition"], 3);
        assert_eq!(summary["dead_lettered_at"], "1970-01-01T00:00:02Z");
        assert_eq!(summary["headers"]["response_id"], "r-1");
    }
}
