//! Phone numbers as they may appear in logs and in dead letters shown to operators: country code
//! and last four digits, the rest masked (`+919876543210` becomes `+91******3210`).
//!
//! Invariant: a phone number is personal data and never reaches a log line (or a dead letter
//! shown by `formstream dlq` and the gateway) in full; every log field that could hold one goes
//! through [`phone`], and every text that may quote one (a provider's error: Twilio's "The 'To'
//! number +1555... is not a valid phone number") through [`scrub_phones`] or [`scrubbed`]. Enough
//! is kept to tell an operator which country and which of a collector's numbers is concerned.

use std::fmt;

/// How many trailing digits stay visible.
const VISIBLE_TAIL: usize = 4;

/// A phone number that formats redacted; use it as a log field: `to = %redact::phone(&to)`.
pub fn phone(number: &str) -> Redacted<'_> {
    Redacted(number)
}

/// See [`phone`]. Borrowing, so that redacting costs nothing unless the line is logged.
#[derive(Clone, Copy)]
pub struct Redacted<'a>(&'a str);

impl fmt::Display for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_phone(self.0))
    }
}

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", redact_phone(self.0))
    }
}

/// The redacted form of `number`. E.164 numbers keep `+` and their country code (found in
/// libphonenumber's metadata: codes are prefix-free, 1 to 3 digits); anything else keeps only its
/// last four digits. Numbers too short to hide anything by keeping four digits are masked whole.
pub fn redact_phone(number: &str) -> String {
    let number = number.trim();
    let (prefix, rest) = match number.strip_prefix('+') {
        Some(digits) => {
            let code_len = country_code_len(digits);
            (&number[..1 + code_len], &digits[code_len..])
        }
        None => ("", number),
    };
    let length = rest.chars().count();
    if length <= VISIBLE_TAIL * 2 - 2 {
        return format!("{prefix}{}", "*".repeat(length.max(1)));
    }
    let tail: String = rest.chars().skip(length - VISIBLE_TAIL).collect();
    format!("{prefix}{}{tail}", "*".repeat(length - VISIBLE_TAIL))
}

/// `text` with every E.164 number in it (`+` and 7 to 15 digits, not part of a longer run of
/// digits) redacted to its country code and last four digits.
pub fn scrub_phones(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        let preceded_by_digit = i > 0 && bytes[i - 1].is_ascii_digit();
        if bytes[i] == b'+' && !preceded_by_digit {
            let digits = bytes[i + 1..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .count();
            if (7..=15).contains(&digits) && bytes[i + 1] != b'0' {
                out.push_str(&text[copied..i]);
                out.push_str(&redact_phone(&text[i..=i + digits]));
                i += 1 + digits;
                copied = i;
                continue;
            }
        }
        i += 1;
    }
    out.push_str(&text[copied..]);
    out
}

/// A value that formats with every E.164 number in its text redacted ([`scrub_phones`]); use it
/// as a log field for a provider's error text, which may quote a recipient:
/// `error = %redact::scrubbed(&error)`. Borrowing, so that nothing is formatted unless the line
/// is logged.
pub fn scrubbed<T: fmt::Display + ?Sized>(value: &T) -> Scrubbed<'_, T> {
    Scrubbed(value)
}

/// See [`scrubbed`].
pub struct Scrubbed<'a, T: ?Sized>(&'a T);

impl<T: fmt::Display + ?Sized> fmt::Display for Scrubbed<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&scrub_phones(&self.0.to_string()))
    }
}

/// The length of the country calling code at the start of `digits`, or 0 when none is known.
fn country_code_len(digits: &str) -> usize {
    (1..=3)
        .find(|&len| {
            digits
                .get(..len)
                .filter(|code| code.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|code| code.parse::<u16>().ok())
                .is_some_and(|code| phonenumber::metadata::DATABASE.region(&code).is_some())
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_country_code_and_last_four() {
        assert_eq!(redact_phone("+919876543210"), "+91******3210");
        assert_eq!(redact_phone("+14155550123"), "+1******0123");
        assert_eq!(redact_phone("+447700900123"), "+44******0123");
        // 3-digit code (Ireland).
        assert_eq!(redact_phone("+353851234567"), "+353*****4567");
    }

    #[test]
    fn non_e164_and_short_inputs_hide_everything_but_the_tail() {
        assert_eq!(redact_phone("09876543210"), "*******3210");
        assert_eq!(redact_phone("12345"), "*****");
        assert_eq!(redact_phone(""), "*");
        assert_eq!(redact_phone("+"), "+*");
    }

    #[test]
    fn phones_in_text_are_scrubbed() {
        assert_eq!(scrub_phones("+919876543210"), "+91******3210");
        assert_eq!(
            scrub_phones("call +14155550123 or +447700900123."),
            "call +1******0123 or +44******0123."
        );
        // Not phones: too short, a leading zero, digits glued before the plus, no plus.
        for kept in [
            "+12345",
            "+0123456789",
            "12+9876543210",
            "9876543210",
            "a + b",
        ] {
            assert_eq!(scrub_phones(kept), kept);
        }
    }

    #[test]
    fn scrubbed_values_format_without_phones() {
        let error = "The 'To' number +15558675310 is not a valid phone number.";
        assert_eq!(
            scrubbed(&error).to_string(),
            "The 'To' number +1******5310 is not a valid phone number."
        );
    }

    #[test]
    fn display_and_debug_are_redacted() {
        let number = "+919876543210";
        assert_eq!(phone(number).to_string(), "+91******3210");
        assert!(!format!("{:?}", phone(number)).contains("98765"));
    }
}
