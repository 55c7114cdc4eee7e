//! Message bodies: which encoding a carrier will use, how many segments a body costs, and the
//! limits Twilio enforces.
//!
//! Why it matters: Twilio's throughput and price are counted in segments, not messages, and one
//! character outside GSM-7 (any Indic script, most emoji, curly quotes) switches the whole body to
//! UCS-2, cutting a segment from 160 to 70 characters. The receipts processor rate-limits per
//! sender in segments, so it needs this count before it sends.
//!
//! Invariant: [`check_body`] rejects exactly what Twilio would reject for its length (21617) or
//! emptiness (21602), so such a body is a permanent failure without a request.

use crate::error::SmsError;

/// Twilio rejects longer bodies with 21617. Counted in characters, as Twilio counts them.
pub const MAX_BODY_CHARS: usize = 1600;

/// The GSM 03.38 basic character set: one septet each.
const GSM7_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?\
¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";

/// The GSM 03.38 extension table: an escape septet plus one, so two septets each.
const GSM7_EXTENSION: &str = "\u{c}^{}\\[~]|€";

/// How a carrier encodes a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// 7-bit GSM: 160 septets in a single segment, 153 per segment when concatenated.
    Gsm7,
    /// UTF-16: 70 code units in a single segment, 67 per segment when concatenated.
    Ucs2,
}

impl Encoding {
    /// (capacity of a lone segment, capacity of each part of a concatenated message), in units.
    fn capacities(self) -> (usize, usize) {
        match self {
            Encoding::Gsm7 => (160, 153),
            Encoding::Ucs2 => (70, 67),
        }
    }
}

/// What a body costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segments {
    pub encoding: Encoding,
    /// Septets (GSM-7) or UTF-16 code units (UCS-2).
    pub units: usize,
    /// Billable segments (at least 1, even for an empty body).
    pub count: usize,
}

/// The cost of one character in septets, or `None` if it is not in GSM-7.
fn gsm7_septets(c: char) -> Option<usize> {
    if GSM7_BASIC.contains(c) {
        Some(1)
    } else if GSM7_EXTENSION.contains(c) {
        Some(2)
    } else {
        None
    }
}

/// The encoding a carrier will use for `body`.
pub fn encoding(body: &str) -> Encoding {
    if body.chars().all(|c| gsm7_septets(c).is_some()) {
        Encoding::Gsm7
    } else {
        Encoding::Ucs2
    }
}

/// Counts the segments of `body`. A character never straddles two parts (an escape pair in
/// GSM-7, a surrogate pair in UCS-2), so a part may carry one unit less than its capacity.
pub fn segments(body: &str) -> Segments {
    let encoding = encoding(body);
    let cost = |c: char| match encoding {
        Encoding::Gsm7 => gsm7_septets(c).unwrap_or(1),
        Encoding::Ucs2 => c.len_utf16(),
    };
    let units: usize = body.chars().map(cost).sum();
    let (single, part) = encoding.capacities();
    if units <= single {
        return Segments {
            encoding,
            units,
            count: 1,
        };
    }
    let (mut count, mut filled) = (1, 0);
    for c in body.chars() {
        let c = cost(c);
        if filled + c > part {
            count += 1;
            filled = 0;
        }
        filled += c;
    }
    Segments {
        encoding,
        units,
        count,
    }
}

/// Rejects a body Twilio would reject: empty (21602) or over 1600 characters (21617).
pub fn check_body(body: &str) -> Result<Segments, SmsError> {
    let chars = body.chars().count();
    if body.trim().is_empty() {
        return Err(SmsError::Permanent {
            status: None,
            code: Some(21602),
            message: "the message body is empty".to_owned(),
        });
    }
    if chars > MAX_BODY_CHARS {
        return Err(SmsError::Permanent {
            status: None,
            code: Some(21617),
            message: format!("the body has {chars} characters; the limit is {MAX_BODY_CHARS}"),
        });
    }
    Ok(segments(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gsm7_single_and_concatenated() {
        assert_eq!(
            segments("Hello"),
            Segments {
                encoding: Encoding::Gsm7,
                units: 5,
                count: 1
            }
        );
        assert_eq!(segments(&"a".repeat(160)).count, 1);
        assert_eq!(segments(&"a".repeat(161)).count, 2);
        assert_eq!(segments(&"a".repeat(306)).count, 2);
        assert_eq!(segments(&"a".repeat(307)).count, 3);
    }

    #[test]
    fn extension_characters_cost_two_septets_and_are_not_split() {
        let s = segments("{€}");
        assert_eq!((s.encoding, s.units), (Encoding::Gsm7, 6));
        assert_eq!(segments(&"€".repeat(80)).count, 1);
        assert_eq!(segments(&"€".repeat(81)).count, 2);
        // 152 septets then an escape pair: the pair moves to the second part.
        let body = format!("{}€{}", "a".repeat(152), "a".repeat(10));
        assert_eq!(segments(&body).units, 164);
        assert_eq!(segments(&body).count, 2);
    }

    #[test]
    fn any_indic_or_emoji_character_makes_the_body_ucs2() {
        assert_eq!(encoding("Receipt: धन्यवाद"), Encoding::Ucs2);
        assert_eq!(encoding("thanks ✓"), Encoding::Ucs2);
        assert_eq!(segments(&"क".repeat(70)).count, 1);
        assert_eq!(segments(&"क".repeat(71)).count, 2);
        assert_eq!(segments(&"क".repeat(134)).count, 2);
        assert_eq!(segments(&"क".repeat(135)).count, 3);
        // An emoji is a surrogate pair: two code units.
        assert_eq!(segments("😀").units, 2);
        assert_eq!(segments(&"😀".repeat(35)).count, 1);
        assert_eq!(segments(&"😀".repeat(36)).count, 2);
    }

    #[test]
    fn bodies_twilio_would_reject_are_permanent_errors() {
        assert!(check_body(&"a".repeat(1600)).is_ok());
        let too_long = check_body(&"a".repeat(1601)).unwrap_err();
        assert!(matches!(
            too_long,
            SmsError::Permanent {
                code: Some(21617),
                ..
            }
        ));
        // Characters, not bytes: 1600 Devanagari characters are 4800 bytes and still fine.
        assert!(check_body(&"क".repeat(1600)).is_ok());
        assert!(matches!(
            check_body("  ").unwrap_err(),
            SmsError::Permanent {
                code: Some(21602),
                ..
            }
        ));
    }
}
