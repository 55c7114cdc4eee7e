//! Word and phrase counts of the committed index, per question (of a form of an organisation) and
//! per city: what the "most frequent words and phrases" query reads. Aggregating a million
//! answers' words at query time takes seconds; these counts change by a few entries per answer and
//! answer that query from memory.
//!
//! Invariants:
//! - The counts are those of the index's last commit: the index adds an answer's
//!   [`Contribution`] (and removes that of the answer it replaces) once the commit that holds it
//!   has succeeded, never before; and on open it builds them from the stored answers, so they need
//!   no storage of their own and cannot drift from the index across restarts.
//! - A word, or a two-word phrase, counts once per answer that uses it, in each city of that
//!   answer (a multiple-choice city question may give several); an answer without a city counts
//!   in none. A city's `answers` is its number of answers to the question.
//! - Counts that fall to zero are removed, so a query never reports a word no answer uses.
//!   Interned words are kept (the vocabulary of a question only grows; it is small next to the
//!   answers).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::collections::HashMap;

use tantivy::tokenizer::Token;

use crate::index::{CityWords, WordCount};

/// What one answer adds to the counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contribution {
    /// The question's key in [`Counts`]: see [`scope_key`].
    scope: String,
    cities: Vec<String>,
    /// The answer's distinct words.
    words: Vec<String>,
    /// Its distinct pairs of consecutive words, as indexes into `words`.
    pairs: Vec<(u32, u32)>,
}

impl Contribution {
    /// The contribution of an answer to question `scope` (a [`scope_key`]) in `cities`, from its
    /// words in order.
    pub fn new(scope: String, cities: &[String], tokens: &[Token]) -> Self {
        let mut index: HashMap<&str, u32> = HashMap::with_capacity(tokens.len());
        let mut words = Vec::with_capacity(tokens.len());
        let mut order = Vec::with_capacity(tokens.len());
        for token in tokens {
            let next = index.len() as u32;
            let id = *index.entry(token.text.as_str()).or_insert_with(|| {
                words.push(token.text.clone());
                next
            });
            order.push(id);
        }
        let mut pairs: Vec<(u32, u32)> = order.windows(2).map(|w| (w[0], w[1])).collect();
        pairs.sort_unstable();
        pairs.dedup();
        Contribution {
            scope,
            cities: cities.to_vec(),
            words,
            pairs,
        }
    }
}

/// The key of a question in [`Counts`]. The parts cannot contain the separator: organisation and
/// form ids and question keys are identifiers.
pub fn scope_key(organisation: &str, form_id: &str, question: &str) -> String {
    format!("{organisation}\u{1f}{form_id}\u{1f}{question}")
}

/// Whether a contribution is added or taken away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Add,
    Remove,
}

/// The counts of every question.
#[derive(Debug, Default)]
pub struct Counts {
    scopes: HashMap<String, ScopeCounts>,
}

#[derive(Debug, Default)]
struct ScopeCounts {
    /// Interned words: `ids[words[i]] == i`.
    ids: HashMap<Box<str>, u32>,
    words: Vec<Box<str>>,
    cities: HashMap<Box<str>, CityCounts>,
}

#[derive(Debug, Default)]
struct CityCounts {
    answers: u64,
    /// Answers using each word, by word id.
    words: HashMap<u32, u64>,
    /// Answers using each phrase, by the ids of its two words (first in the high half).
    phrases: HashMap<u64, u64>,
}

impl ScopeCounts {
    fn intern(&mut self, word: &str) -> u32 {
        if let Some(&id) = self.ids.get(word) {
            return id;
        }
        let id = self.words.len() as u32;
        self.words.push(word.into());
        self.ids.insert(word.into(), id);
        id
    }
}

fn bump<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, u64>, key: K, change: Change) {
    match change {
        Change::Add => *counts.entry(key).or_insert(0) += 1,
        Change::Remove => {
            if let std::collections::hash_map::Entry::Occupied(mut count) = counts.entry(key) {
                *count.get_mut() -= 1;
                if *count.get() == 0 {
                    count.remove();
                }
            }
        }
    }
}

impl Counts {
    /// Adds or removes one answer.
    pub fn apply(&mut self, contribution: &Contribution, change: Change) {
        if contribution.cities.is_empty() {
            return;
        }
        let scope = self
            .scopes
            .entry(contribution.scope.clone())
            .or_default();
        let ids: Vec<u32> = contribution.words.iter().map(|w| scope.intern(w)).collect();
        for city in &contribution.cities {
            let counts = scope.cities.entry(city.as_str().into()).or_default();
            counts.answers = match change {
                Change::Add => counts.answers + 1,
                Change::Remove => counts.answers.saturating_sub(1),
            };
            for &id in &ids {
                bump(&mut counts.words, id, change);
            }
            for &(a, b) in &contribution.pairs {
                let key = (u64::from(ids[a as usize]) << 32) | u64::from(ids[b as usize]);
                bump(&mut counts.phrases, key, change);
            }
            if counts.answers == 0 {
                scope.cities.remove(city.as_str());
            }
        }
    }

    /// The `limit` most frequent words and phrases of question `scope` (a [`scope_key`]) in
    /// `city`, or in each of its `cities` most answered cities; most answered cities first.
    pub fn top(&self, scope: &str, city: Option<&str>, cities: usize, limit: usize) -> Vec<CityWords> {
        let Some(scope) = self.scopes.get(scope) else {
            return Vec::new();
        };
        let mut chosen: Vec<(&str, &CityCounts)> = match city {
            Some(city) => scope
                .cities
                .get_key_value(city)
                .map(|(name, counts)| (&**name, counts))
                .into_iter()
                .collect(),
            None => {
                let all = scope.cities.iter().map(|(name, counts)| (&**name, counts));
                top_k(all.map(|(name, counts)| (counts.answers, name)), cities)
                    .into_iter()
                    .filter_map(|(_, name)| scope.cities.get_key_value(name))
                    .map(|(name, counts)| (&**name, counts))
                    .collect()
            }
        };
        chosen.sort_by(|a, b| b.1.answers.cmp(&a.1.answers).then_with(|| a.0.cmp(b.0)));
        let word = |id: u32| scope.words[id as usize].as_ref();
        chosen
            .into_iter()
            .map(|(name, counts)| CityWords {
                city: name.to_owned(),
                answers: counts.answers,
                words: top_k(counts.words.iter().map(|(&id, &n)| (n, word(id))), limit)
                    .into_iter()
                    .map(|(answers, w)| WordCount {
                        word: w.to_owned(),
                        answers,
                    })
                    .collect(),
                phrases: top_k(
                    counts
                        .phrases
                        .iter()
                        .map(|(&key, &n)| (n, (word((key >> 32) as u32), word(key as u32)))),
                    limit,
                )
                .into_iter()
                .map(|(answers, (a, b))| WordCount {
                    word: format!("{a} {b}"),
                    answers,
                })
                .collect(),
            })
            .collect()
    }
}

/// The `k` entries with the highest counts, ties in name order, best first; one pass, a heap of
/// `k`. Names are compared only when counts tie with the worst kept.
fn top_k<N: Ord + Copy>(entries: impl Iterator<Item = (u64, N)>, k: usize) -> Vec<(u64, N)> {
    if k == 0 {
        return Vec::new();
    }
    // Ranked by (fewer answers, later name): the heap's top is the worst entry kept.
    let mut heap: BinaryHeap<(Reverse<u64>, N)> = BinaryHeap::with_capacity(k + 1);
    for (count, name) in entries {
        if heap.len() == k {
            let Some(&(Reverse(worst), worst_name)) = heap.peek() else {
                continue;
            };
            if count < worst || (count == worst && name >= worst_name) {
                continue;
            }
            heap.pop();
        }
        heap.push((Reverse(count), name));
    }
    heap.into_sorted_vec()
        .into_iter()
        .map(|(Reverse(count), name)| (count, name))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::tokens;

    fn answer(city: &str, text: &str) -> Contribution {
        Contribution::new(scope_key("acme", "f", "q"), &[city.to_owned()], &tokens(text))
    }

    fn words(city: &CityWords) -> Vec<(&str, u64)> {
        city.words.iter().map(|w| (w.word.as_str(), w.answers)).collect()
    }

    fn phrases(city: &CityWords) -> Vec<(&str, u64)> {
        city.phrases.iter().map(|w| (w.word.as_str(), w.answers)).collect()
    }

    #[test]
    fn a_word_counts_once_per_answer_and_phrases_are_consecutive_pairs() {
        let mut counts = Counts::default();
        counts.apply(&answer("pune", "mast mast bhai mast bhai"), Change::Add);
        counts.apply(&answer("pune", "bhai mast"), Change::Add);
        let top = counts.top(&scope_key("acme", "f", "q"), None, 10, 10);
        assert_eq!(top.len(), 1);
        assert_eq!(top[0].answers, 2);
        assert_eq!(words(&top[0]), [("bhai", 2), ("mast", 2)]);
        assert_eq!(
            phrases(&top[0]),
            [("bhai mast", 2), ("mast bhai", 1), ("mast mast", 1)]
        );
    }

    #[test]
    fn removing_an_answer_undoes_it_and_empty_cities_disappear() {
        let mut counts = Counts::default();
        let old = answer("pune", "पुराना शब्द");
        counts.apply(&old, Change::Add);
        counts.apply(&answer("delhi", "नया शब्द"), Change::Add);
        counts.apply(&old, Change::Remove);
        let top = counts.top(&scope_key("acme", "f", "q"), None, 10, 10);
        assert_eq!(top.len(), 1, "{top:?}");
        assert_eq!(top[0].city, "delhi");
        assert_eq!(words(&top[0]), [("नया", 1), ("शब्द", 1)]);
        assert!(counts.top(&scope_key("acme", "f", "q"), Some("pune"), 10, 10).is_empty());
    }

    #[test]
    fn most_answered_cities_first_then_by_name_and_limits_hold() {
        let mut counts = Counts::default();
        for (city, n) in [("b", 2), ("a", 2), ("c", 3), ("d", 1)] {
            for _ in 0..n {
                counts.apply(&answer(city, "x y z"), Change::Add);
            }
        }
        let scope = scope_key("acme", "f", "q");
        let names: Vec<String> = counts
            .top(&scope, None, 3, 2)
            .into_iter()
            .map(|c| c.city)
            .collect();
        assert_eq!(names, ["c", "a", "b"]);
        let one = counts.top(&scope, Some("d"), 3, 2);
        assert_eq!(one.len(), 1);
        assert_eq!(words(&one[0]), [("x", 1), ("y", 1)]);
        assert_eq!(phrases(&one[0]), [("x y", 1), ("y z", 1)]);
        assert!(counts.top(&scope, None, 3, 0)[0].words.is_empty());
        assert!(counts.top(&scope_key("acme", "f", "other"), None, 3, 2).is_empty());
    }

    #[test]
    fn an_answer_without_a_city_counts_nowhere_and_several_cities_count_in_each() {
        let mut counts = Counts::default();
        let scope = scope_key("acme", "f", "q");
        counts.apply(&Contribution::new(scope.clone(), &[], &tokens("mast")), Change::Add);
        assert!(counts.top(&scope, None, 10, 10).is_empty());
        let both = Contribution::new(scope.clone(), &["a".into(), "b".into()], &tokens("mast"));
        counts.apply(&both, Change::Add);
        let top = counts.top(&scope, None, 10, 10);
        assert_eq!(top.len(), 2);
        assert!(top.iter().all(|c| words(c) == [("mast", 1)]));
    }

    #[test]
    fn top_k_matches_a_full_sort() {
        let entries: Vec<(u64, u32)> = (0..500u32).map(|i| (u64::from(i * 7919 % 13), i)).collect();
        let mut sorted = entries.clone();
        sorted.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        for k in [1, 5, 13, 499, 500, 600] {
            assert_eq!(
                top_k(entries.iter().copied(), k),
                sorted[..k.min(sorted.len())].to_vec(),
                "k = {k}"
            );
        }
    }
}
