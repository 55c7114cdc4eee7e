//! Short references that SMS carry so that reconciliation finds them in Twilio's message list
//! (by recipient and a substring of the body) after a crash or an ambiguous answer.
//!
//! Invariant: a reference is a pure function of its inputs (every retry of one message carries
//! the same one) and is ASCII letters and digits only, which a Messaging Service's smart encoding
//! leaves alone. It hashes the id rather than quoting a prefix: UUIDv7 prefixes are timestamps,
//! equal for responses submitted together.

use sha2::{Digest, Sha256};

/// `prefix` followed by 10 upper-case hex digits (40 bits) of SHA-256(`id`), e.g. `RC3F2A9C1B7E`.
/// 40 bits suffice: references only need to differ between messages to one number within the
/// few days reconciliation searches.
pub fn short(prefix: &str, id: &str) -> String {
    let digest = Sha256::digest(id.as_bytes());
    format!("{prefix}{}", hex::encode_upper(&digest[..5]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_ascii_and_distinct() {
        let a = short("RC", "0b9e4a44-0000-7000-8000-000000000001");
        assert_eq!(a, short("RC", "0b9e4a44-0000-7000-8000-000000000001"));
        assert_eq!(a.len(), 12);
        assert!(a.starts_with("RC") && a.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(a, short("RC", "0b9e4a44-0000-7000-8000-000000000002"));
    }
}
