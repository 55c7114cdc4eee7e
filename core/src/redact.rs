//! Phone numbers as they may appear in logs and in dead letters shown to operators: country code
//! and last four digits, the rest masked (`+919876543210` becomes `+91******3210`).
//!
//! Invariant: a phone number is personal data and never reaches a log line (or a dead letter
//! shown by `formstream dlq` and the gateway) in full; every log field that could hold one goes
//! through [`phone`]. Enough is kept to tell an operator which
//! country and which of a collector's numbers is concerned.

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
    fn display_and_debug_are_redacted() {
        let number = "+919876543210";
        assert_eq!(phone(number).to_string(), "+91******3210");
        assert!(!format!("{:?}", phone(number)).contains("98765"));
    }
}
