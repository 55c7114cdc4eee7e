//! Recognising a retried submission: the same organisation, response id and revision, with the
//! same content (form included).
//!
//! Invariant: while a key is remembered, at most one content is ever published for it by this
//! instance: a different content gets a conflict, even while the first is still in flight. It is a
//! cache, bounded and per instance; downstream effects are idempotent per (response id, revision)
//! whatever it forgets.

use std::num::NonZeroUsize;
use std::sync::Arc;

use quick_cache::sync::{Cache, DefaultLifecycle, EntryAction, EntryResult};
use quick_cache::{DefaultHashBuilder, OptionsBuilder, UnitWeighter};
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

/// The remembered submissions: quick_cache's sharded S3-FIFO cache, whose every operation on a
/// key is atomic under its shard's lock. Every response of a gateway goes through it twice (its
/// claim, then its answer from the delivery report), on request threads and librdkafka's at once:
/// a single LRU behind one mutex cost several times more, in contention and in the cache misses
/// of relinking its list.
///
/// A new entry sits in the cache's cold part until it is used again (its answer, here) or pushed
/// out. quick_cache gives that part 3 % of the capacity by default: a claim whose answer took a
/// while (a slow broker) would be forgotten after 3,000 newer ones, and a conflicting content
/// could then be published for its key. Half the capacity keeps it for 50,000.
pub struct Submissions<A> {
    entries: Cache<Key, Entry<A>>,
}

/// The part of the capacity for entries used more than once (answered claims).
const HOT_ALLOCATION: f64 = 0.5;

impl<A: Clone> Submissions<A> {
    pub fn new(capacity: NonZeroUsize) -> Self {
        let items = capacity.get();
        let entries = OptionsBuilder::new()
            .estimated_items_capacity(items)
            .weight_capacity(u64::try_from(items).unwrap_or(u64::MAX))
            .hot_allocation(HOT_ALLOCATION)
            .build()
            .map(|options| {
                Cache::with_options(
                    options,
                    UnitWeighter,
                    DefaultHashBuilder::default(),
                    DefaultLifecycle::default(),
                )
            })
            // Only for options out of their range, which these are not.
            .unwrap_or_else(|_| Cache::new(items));
        Submissions { entries }
    }

    pub fn claim(&self, key: &Key, digest: &Digest) -> Claim<A> {
        // One atomic step whether the key is new or not: a concurrent claim of the same key
        // waits for this one's placeholder to be filled, so two claims are never both `Fresh`.
        let held = self.entries.entry(key, None, |_, held| {
            EntryAction::Retain(match held {
                Entry::Pending(held) if held == digest => Claim::InFlight,
                Entry::Accepted(held, answer) if held == digest => Claim::Repeat(answer.clone()),
                _ => Claim::Conflict,
            })
        });
        match held {
            EntryResult::Retained(claim) => claim,
            EntryResult::Vacant(slot) => match slot.insert(Entry::Pending(*digest)) {
                Ok(()) => Claim::Fresh,
                // The placeholder was taken away (the cache was cleared): what it held is unknown.
                Err(_) => Claim::Conflict,
            },
            // Neither comes from `Retain` without a timeout; refusing is what keeps the invariant.
            EntryResult::Removed(..) | EntryResult::Replaced(..) | EntryResult::Timeout => {
                Claim::Conflict
            }
        }
    }

    /// Records the answer of a `Fresh` claim that Kafka acknowledged.
    pub fn accepted(&self, key: Key, digest: Digest, answer: A) {
        let mut answer = Some(answer);
        let held = self.entries.entry(&key, None, |_, held| {
            if let Some(answer) = answer.take() {
                *held = Entry::Accepted(digest, answer);
            }
            EntryAction::Retain(())
        });
        // Evicted while in flight: remembered again.
        if let (EntryResult::Vacant(slot), Some(answer)) = (held, answer) {
            let _ = slot.insert(Entry::Accepted(digest, answer));
        }
    }

    /// Forgets a `Fresh` claim whose publish failed, so that a retry can try again.
    pub fn release(&self, key: &Key, digest: &Digest) {
        self.entries.remove_if(
            key,
            |held| matches!(held, Entry::Pending(held) if held == digest),
        );
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
    fn of_many_concurrent_claims_of_a_key_exactly_one_is_fresh() {
        for round in 0..200 {
            let cache = cache();
            let claims: Vec<Claim<&str>> = std::thread::scope(|scope| {
                let threads: Vec<_> = (0..4)
                    .map(|_| scope.spawn(|| cache.claim(&key("a", round), &[1; 32])))
                    .collect();
                threads
                    .into_iter()
                    .map(|t| t.join().expect("no panic"))
                    .collect()
            });
            let fresh = claims.iter().filter(|c| **c == Claim::Fresh).count();
            assert_eq!(fresh, 1, "round {round}: {claims:?}");
            assert!(
                claims
                    .iter()
                    .all(|c| matches!(c, Claim::Fresh | Claim::InFlight))
            );
        }
    }

    #[test]
    fn an_answer_is_remembered_even_after_its_claim_was_evicted() {
        let cache = cache();
        // A full cache first: a claim made then is new, and goes where new entries are evicted.
        for revision in 1..=64 {
            cache.claim(&key("b", revision), &[2; 32]);
        }
        assert_eq!(cache.claim(&key("a", 0), &[1; 32]), Claim::Fresh);
        for revision in 65..=128 {
            cache.claim(&key("b", revision), &[2; 32]);
        }
        assert!(cache.entries.peek(&key("a", 0)).is_none(), "evicted");
        cache.accepted(key("a", 0), [1; 32], "answer");
        assert_eq!(cache.claim(&key("a", 0), &[1; 32]), Claim::Repeat("answer"));
    }

    #[test]
    fn an_unanswered_claim_outlives_many_newer_ones() {
        let cache = Submissions::<&str>::new(NonZeroUsize::new(1_000).expect("non-zero"));
        // Steady traffic: each claim is answered soon after.
        let submit = |revision| {
            cache.claim(&key("b", revision), &[2; 32]);
            cache.accepted(key("b", revision), [2; 32], "answer");
        };
        (1..=2_000).for_each(submit);
        assert_eq!(cache.claim(&key("a", 0), &[1; 32]), Claim::Fresh);
        // Far more than quick_cache's default cold part (3 %) would keep unanswered.
        (2_001..=2_300).for_each(submit);
        assert_eq!(cache.claim(&key("a", 0), &[2; 32]), Claim::Conflict);
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
