//! Phone numbers: parsed with libphonenumber and written in E.164, with a cache for the numbers
//! the gateway sees again and again (a collector's own).
//!
//! Invariant: a number is E.164 only when libphonenumber calls it valid, and a cached answer is
//! exactly what [`normalise_phone`] returns for the same input.

use std::num::NonZeroUsize;

use arrayvec::ArrayString;
use phonenumber::country;
use quick_cache::sync::Cache;

/// E.164 if `raw` is a valid number, read with `region` when it has no country code.
pub fn normalise_phone(raw: &str, region: Option<country::Id>) -> Option<String> {
    if raw.len() > MAX_PHONE_INPUT {
        return None;
    }
    let number = phonenumber::parse(region, raw).ok()?;
    phonenumber::is_valid(&number)
        .then(|| number.format().mode(phonenumber::Mode::E164).to_string())
}

/// Recently normalised phone numbers. libphonenumber's validity check runs dozens of regular
/// expressions (a third of the gateway's CPU without this cache), and a collector's own number
/// arrives with every response they submit. quick_cache's sharded cache: a hit takes a shard's
/// read lock, so the request threads do not queue for it.
///
/// Invariant: a cached answer is exactly what [`normalise_phone`] returns for the same input.
pub struct Phones {
    /// (region, input as written) -> its E.164 form, or `None` for an invalid number. Held inline
    /// and copied out on a hit: no allocation, and no reference count that the request threads
    /// would contend for on a busy collector's number.
    cache: Cache<PhoneInput, Option<ArrayString<E164_MAX>>>,
}

type PhoneInput = (Option<country::Id>, ArrayString<MAX_PHONE_INPUT>);

/// Longest phone input read at all; longer ones are invalid.
const MAX_PHONE_INPUT: usize = 64;
/// "+" and at most 15 digits.
const E164_MAX: usize = 16;

impl Phones {
    pub fn new(capacity: NonZeroUsize) -> Self {
        Phones {
            cache: Cache::new(capacity.get()),
        }
    }

    pub fn normalise(&self, raw: &str, region: Option<country::Id>) -> Option<String> {
        // Longer than any input read: invalid, as `normalise_phone` says too.
        let input: PhoneInput = (region, ArrayString::from(raw).ok()?);
        if let Some(held) = self.cache.get(&input) {
            return held.map(|e164| e164.as_str().to_owned());
        }
        let e164 = normalise_phone(raw, region);
        match e164.as_deref().map(ArrayString::from) {
            None => self.cache.insert(input, None),
            Some(Ok(held)) => self.cache.insert(input, Some(held)),
            // A number too long to hold is answered, just not remembered.
            Some(Err(_)) => {}
        }
        e164
    }
}

impl Default for Phones {
    fn default() -> Self {
        // Enough for the collectors active on one gateway; respondents rarely repeat.
        Phones::new(NonZeroUsize::new(16_384).unwrap_or(NonZeroUsize::MIN))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_phones_answer_as_uncached_ones() {
        let phones = Phones::new(NonZeroUsize::new(2).expect("non-zero"));
        let inputs = [
            ("098765 43210", Some(country::Id::IN)),
            ("098765 43210", None),
            ("+44 20 7946 0958", None),
            ("12", Some(country::Id::IN)),
            ("098765 43210", Some(country::Id::IN)),
            // Too long to be a number, or to be remembered.
            (
                "+91 98765 43210                                                   x",
                None,
            ),
        ];
        for _ in 0..3 {
            for (raw, region) in inputs {
                assert_eq!(
                    phones.normalise(raw, region),
                    normalise_phone(raw, region),
                    "{raw} in {region:?}"
                );
            }
        }
    }
}
