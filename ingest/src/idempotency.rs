//! Recognising a retried submission: the same organisation, response id and revision, with the
//! same content (form included).
//!
//! Invariant: while a key is remembered, at most one content is ever published for it by this
//! instance: a different content gets a conflict, even while the first is still in flight. It is a
//! cache, bounded and per instance; downstream effects are idempotent per (response id, revision)
//! whatever it forgets.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use lru::LruCache;
use uuid::Uuid;

/// Who submitted which revision of which response. Scoped by organisation, so that one
/// organisation's submissions never answer another's.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub organisation: Arc<str>,
    pub response_id: Uuid,
    pub revision: i32,
}

/// SHA-256 of what was submitted, form id included.
pub type Digest = [u8; 32];

#[derive(Debug, Clone)]
enum Entry<A> {
    /// Being published; the answer is not known yet.
    Pending(Digest),
    /// Acknowledged by Kafka, with the answer the client got.
    Accepted(Digest, A),
}

/// What a submission may do.
#[derive(Debug, PartialEq)]
pub enum Claim<A> {
    /// Nothing is remembered for the key: publish, then `accepted` or `release`.
    Fresh,
    /// The same content was accepted already: answer this without publishing.
    Repeat(A),
    /// The same content is being published by another request: publishing it again is a harmless
    /// duplicate, so go ahead (without completing or releasing the key).
    InFlight,
    /// Other content holds the key.
    Conflict,
}

pub struct Submissions<A> {
    entries: Mutex<LruCache<Key, Entry<A>>>,
}

impl<A: Clone> Submissions<A> {
    pub fn new(capacity: NonZeroUsize) -> Self {
        Submissions {
            entries: Mutex::new(LruCache::new(capacity)),
        }
    }

    pub fn claim(&self, key: &Key, digest: &Digest) -> Claim<A> {
        let Ok(mut entries) = self.entries.lock() else {
            return Claim::Fresh;
        };
        // One lookup whether the key is new or not (a `get` then a `put` would take two).
        let mut fresh = false;
        let entry = entries.get_or_insert_with_key(key.clone(), |_| {
            fresh = true;
            Entry::Pending(*digest)
        });
        match entry {
            _ if fresh => Claim::Fresh,
            Entry::Pending(held) if held == digest => Claim::InFlight,
            Entry::Accepted(held, answer) if held == digest => Claim::Repeat(answer.clone()),
            _ => Claim::Conflict,
        }
    }

    /// Records the answer of a `Fresh` claim that Kafka acknowledged.
    pub fn accepted(&self, key: Key, digest: Digest, answer: A) {
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        // Updated in place when still held (the common case): cheaper than a second insert.
        match entries.peek_mut(&key) {
            Some(entry) => *entry = Entry::Accepted(digest, answer),
            None => {
                entries.put(key, Entry::Accepted(digest, answer));
            }
        }
    }

    /// Forgets a `Fresh` claim whose publish failed, so that a retry can try again.
    pub fn release(&self, key: &Key, digest: &Digest) {
        if let Ok(mut entries) = self.entries.lock()
            && matches!(entries.peek(key), Some(Entry::Pending(held)) if held == digest)
        {
            entries.pop(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(organisation: &str, revision: i32) -> Key {
        Key {
            organisation: organisation.into(),
            response_id: Uuid::from_u128(7),
            revision,
        }
    }

    fn cache() -> Submissions<&'static str> {
        Submissions::new(NonZeroUsize::new(16).expect("non-zero"))
    }

    #[test]
    fn same_content_repeats_and_other_content_conflicts() {
        let cache = cache();
        assert_eq!(cache.claim(&key("a", 0), &[1; 32]), Claim::Fresh);
        assert_eq!(cache.claim(&key("a", 0), &[1; 32]), Claim::InFlight);
        assert_eq!(
            cache.claim(&key("a", 0), &[2; 32]),
            Claim::Conflict,
            "conflict while in flight"
        );
        cache.accepted(key("a", 0), [1; 32], "answer");
        assert_eq!(cache.claim(&key("a", 0), &[1; 32]), Claim::Repeat("answer"));
        assert_eq!(cache.claim(&key("a", 0), &[2; 32]), Claim::Conflict);
    }

    #[test]
    fn organisations_and_revisions_are_separate() {
        let cache = cache();
        assert_eq!(cache.claim(&key("a", 0), &[1; 32]), Claim::Fresh);
        assert_eq!(cache.claim(&key("b", 0), &[2; 32]), Claim::Fresh);
        assert_eq!(cache.claim(&key("a", 1), &[3; 32]), Claim::Fresh);
    }

    #[test]
    fn a_released_claim_can_be_claimed_again() {
        let cache = cache();
        assert_eq!(cache.claim(&key("a", 0), &[1; 32]), Claim::Fresh);
        cache.release(&key("a", 0), &[2; 32]);
        assert_eq!(
            cache.claim(&key("a", 0), &[2; 32]),
            Claim::Conflict,
            "only the owner's digest releases"
        );
        cache.release(&key("a", 0), &[1; 32]);
        assert_eq!(cache.claim(&key("a", 0), &[2; 32]), Claim::Fresh);
    }
}
