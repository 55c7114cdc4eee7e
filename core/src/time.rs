//! Time as the records carry it: milliseconds since the Unix epoch, shown as RFC 3339.
//!
//! Invariant: [`rfc3339`] never fails; a time it cannot show (out of range) is the empty string.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// `millis` (since the Unix epoch, UTC) as RFC 3339, e.g. `2026-11-28T10:15:00Z`.
pub fn rfc3339(millis: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// Now, in milliseconds since the Unix epoch.
pub fn now_millis() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_show_as_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_860_900_123), "2026-11-28T10:15:00.123Z");
        assert_eq!(rfc3339(i64::MAX), "");
    }
}
