//! Which dead letters an operator asks for: by error kind, organisation, form, response id and
//! the time they were dead-lettered. Every condition given must hold; none given matches all.
//!
//! Invariant: parsing is strict (an unknown kind, a time that is not RFC 3339, an empty range is
//! an error naming the parameter), so that a typo never widens a re-drive or a discard.

use formstream_core::time::rfc3339;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::dlq::Kind;
use crate::redrive::letter::DeadLetter;

/// Conditions on dead letters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// The `formstream.dlq.error.kind` header.
    pub kind: Option<Kind>,
    /// The organisation of the record (a record that cannot be decoded has none, and matches no
    /// organisation).
    pub organisation: Option<String>,
    pub form_id: Option<String>,
    pub response_id: Option<String>,
    /// Dead-lettered at or after (milliseconds since the epoch).
    pub since_ms: Option<i64>,
    /// Dead-lettered before.
    pub until_ms: Option<i64>,
}

/// A parameter of a filter that does not parse: which one, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{parameter}: {reason}")]
pub struct FilterError {
    /// The parameter's name as the caller wrote it (`kind`, `since`, ...).
    pub parameter: &'static str,
    pub reason: String,
}

impl Filter {
    /// Whether `letter` meets every condition.
    pub fn matches(&self, letter: &DeadLetter) -> bool {
        let record = letter.record.summary();
        self.kind.is_none_or(|kind| letter.kind() == Some(kind))
            && self
                .organisation
                .as_deref()
                .is_none_or(|o| record.as_ref().is_some_and(|r| r.organisation == o))
            && self
                .form_id
                .as_deref()
                .is_none_or(|f| record.as_ref().is_some_and(|r| r.form_id == f))
            && self
                .response_id
                .as_deref()
                .is_none_or(|id| letter.response_id().as_deref() == Some(id))
            && self
                .since_ms
                .is_none_or(|since| letter.dead_lettered_ms() >= since)
            && self
                .until_ms
                .is_none_or(|until| letter.dead_lettered_ms() < until)
    }

    /// Checks what cannot be checked one parameter at a time: the range is not empty.
    pub fn validated(self) -> Result<Self, FilterError> {
        if let (Some(since), Some(until)) = (self.since_ms, self.until_ms)
            && until <= since
        {
            return Err(FilterError {
                parameter: "until",
                reason: format!("{} is not after since ({})", rfc3339(until), rfc3339(since)),
            });
        }
        Ok(self)
    }

    /// Whether no condition is set.
    pub fn is_empty(&self) -> bool {
        *self == Filter::default()
    }
}

/// An error kind by its header value (`permanent`, `retries_exhausted`, `undecodable`,
/// `unknown_form`).
pub fn parse_kind(text: &str) -> Result<Kind, String> {
    Kind::parse(text.trim()).ok_or_else(|| {
        let known: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
        format!("unknown error kind {text:?}; one of {}", known.join(", "))
    })
}

/// An RFC 3339 time (`2026-11-28T10:15:00Z`) as milliseconds since the epoch.
pub fn parse_time(text: &str) -> Result<i64, String> {
    OffsetDateTime::parse(text.trim(), &Rfc3339)
        .map(|at| (at.unix_timestamp_nanos() / 1_000_000) as i64)
        .map_err(|_| format!("{text:?} is not an RFC 3339 time such as 2026-11-28T10:15:00Z"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_by_their_header_value_only() {
        assert_eq!(parse_kind("retries_exhausted"), Ok(Kind::RetriesExhausted));
        assert_eq!(parse_kind(" permanent "), Ok(Kind::Permanent));
        let error = parse_kind("Permanent").expect_err("case matters");
        assert!(error.contains("unknown_form"), "{error}");
    }

    #[test]
    fn times_are_rfc3339() {
        assert_eq!(parse_time("1970-01-01T00:00:01Z"), Ok(1_000));
        assert_eq!(
            parse_time("2026-11-28T10:15:00.123+00:00"),
            Ok(1_795_860_900_123)
        );
        assert!(parse_time("yesterday").is_err());
        assert!(parse_time("2026-11-28").is_err());
    }

    #[test]
    fn an_empty_range_is_refused() {
        let filter = Filter {
            since_ms: Some(2_000),
            until_ms: Some(2_000),
            ..Filter::default()
        };
        let error = filter.validated().expect_err("empty range");
        assert_eq!(error.parameter, "until");
        let filter = Filter {
            since_ms: Some(1_000),
            until_ms: Some(2_000),
            ..Filter::default()
        };
        assert!(filter.validated().is_ok());
    }
}
