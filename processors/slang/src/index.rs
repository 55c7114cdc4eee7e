//! The slang index: one Tantivy document per (response, indexed text question), with the
//! response's city, revision, form and organisation; and the consumed offsets in its commits.
//!
//! Invariants:
//! - Each Tantivy commit carries, as its payload, offsets below which every consumed record is in
//!   that commit (or was dead-lettered). Reopening the index and reading from those offsets
//!   therefore redoes only records that may be missing, and redoing one is harmless (next point):
//!   each response revision is in the index exactly once, through crashes and restarts.
//! - A response is in the index at its highest revision seen only: a revision replaces the
//!   documents of lower ones (delete by the response's identity, then add), and a revision at or
//!   below the one indexed changes nothing (a redelivery, or an older revision arriving late).
//! - A response is known by its whole identity, (organisation, form id, response id)
//!   ([`ResponseKey`]): another organisation (or another form) reusing a response id is another
//!   response, and can neither replace nor remove this one's documents and counts.
//! - The word and phrase counts ([`Counts`]) are those of the last commit (see `counts`). Each
//!   commit writes them to a [`crate::snapshot`] tagged with that commit; opening the index reads the
//!   snapshot of its commit, or (none, or another commit's) rebuilds them from the stored answers.
//! - Every response identity in the index or in the writer is in `known` (as a hash): a response
//!   whose hash is not there is new, and needs no look-up in the index. Only corrections,
//!   redeliveries and hash collisions take the look-up. On open it is read from the identity
//!   field's terms (not the stored documents): a deleted document's term may linger until a
//!   merge, which only costs its response a look-up.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::BuildHasher;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tantivy::collector::{Count, TopDocs};
use tantivy::directory::MmapDirectory;
use tantivy::query::{BooleanQuery, Occur, PhraseQuery, Query, TermQuery};
use tantivy::schema::{
    FAST, Field, IndexRecordOption, STORED, STRING, Schema, TextFieldIndexing, TextOptions, Value,
};
use tantivy::tokenizer::TokenizerManager;
use tantivy::{
    DocAddress, Index, IndexReader, IndexWriter, ReloadPolicy, Searcher, TantivyDocument, Term,
};

use formstream_core::identity::ResponseKey;

use crate::counts::{Change, Contribution, Counts, scope_key};
use crate::snapshot::{Snapshots, Tag};
use crate::tokenizer::{WORDS, WordTokenizer, words};

/// Everything that can go wrong with the index; all of it is the index's (a disk, a corrupt
/// file), never the caller's input.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error(transparent)]
    Tantivy(#[from] tantivy::TantivyError),
    #[error("opening the index directory {path}: {source}")]
    Directory {
        path: String,
        source: tantivy::directory::error::OpenDirectoryError,
    },
    #[error("creating the index directory {path}: {source}")]
    Create {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "the index in {0} was written by another version of formstream (its schema differs): \
         delete that directory, and the slang processor rebuilds the index from the topic"
    )]
    Schema(String),
    #[error("the index's commit payload is not ours: {0}")]
    Payload(serde_json::Error),
    #[error("reading the index: {0}")]
    Io(#[from] std::io::Error),
    #[error("the index's writer lock is poisoned")]
    Poisoned,
    #[error("aggregation result of an unexpected shape: {0}")]
    Aggregation(String),
}

/// The fields of a document.
#[derive(Debug, Clone, Copy)]
struct Fields {
    /// The question answered: [`scope_key`] of its organisation, form and key. One term to
    /// filter on, and stored, so that the counts can be rebuilt on open.
    scope: Field,
    /// The response's identity, [`ResponseKey`]: the term a revision's documents are replaced
    /// and looked up by; stored, so that `known` can be rebuilt on open.
    identity: Field,
    /// Stored only: shown in results.
    response_id: Field,
    revision: Field,
    city: Field,
    submitted_at: Field,
    /// The answer as written: stored only (shown in results, and the source of the counts when
    /// the index is opened).
    text: Field,
    /// The answer's words ([`WordTokenizer`], in Tantivy's indexing threads): indexed with
    /// positions (phrase queries).
    words: Field,
}

fn schema() -> (Schema, Fields) {
    let mut builder = Schema::builder();
    let words = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer(WORDS)
            .set_index_option(IndexRecordOption::WithFreqsAndPositions),
    );
    let fields = Fields {
        scope: builder.add_text_field("scope", STRING | STORED),
        identity: builder.add_text_field("identity", STRING | STORED),
        response_id: builder.add_text_field("response_id", STORED),
        revision: builder.add_i64_field("revision", STORED),
        city: builder.add_text_field("city", STRING | STORED | FAST),
        submitted_at: builder.add_i64_field("submitted_at", STORED),
        text: builder.add_text_field("text", STORED),
        words: builder.add_text_field("words", words),
    };
    (builder.build(), fields)
}

/// The commit payload: per topic, per partition, the next offset to read.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Payload {
    pub offsets: BTreeMap<String, BTreeMap<i32, i64>>,
}

/// The documents of one response revision.
#[derive(Debug, Clone)]
pub struct Entry {
    /// [`Entry::identity`], computed once from the three fields after it (which are private so
    /// that it cannot go stale).
    identity: String,
    organisation: String,
    form_id: String,
    response_id: String,
    pub revision: i32,
    pub submitted_at: i64,
    /// Choice keys of the city question (several for a multiple choice; none when unanswered).
    pub cities: Vec<String>,
    /// (question key, answer text) of each indexed text question answered.
    pub texts: Vec<(String, String)>,
}

impl Entry {
    pub fn new(
        organisation: String,
        form_id: String,
        response_id: String,
        revision: i32,
        submitted_at: i64,
        cities: Vec<String>,
        texts: Vec<(String, String)>,
    ) -> Self {
        let identity = ResponseKey {
            organisation: &organisation,
            form_id: &form_id,
            response_id: &response_id,
        }
        .to_string();
        Entry {
            identity,
            form_id,
            organisation,
            response_id,
            revision,
            submitted_at,
            cities,
            texts,
        }
    }

    /// The response's identity key, `<organisation>/<form id>/<response id>` ([`ResponseKey`]).
    pub fn identity(&self) -> &str {
        &self.identity
    }
}

/// What became of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upsert {
    /// Its documents replaced those of any earlier revision.
    Indexed,
    /// The index already has this revision or a later one.
    Stale,
}

/// A word (or phrase) and the number of answers that use it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WordCount {
    pub word: String,
    pub answers: u64,
}

/// One city's answers and their most frequent words and phrases.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CityWords {
    pub city: String,
    pub answers: u64,
    pub words: Vec<WordCount>,
    pub phrases: Vec<WordCount>,
}

/// A city and the number of its answers that use a word.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CityCount {
    pub city: String,
    pub answers: u64,
}

/// One matching answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hit {
    pub response_id: String,
    pub revision: i64,
    pub cities: Vec<String>,
    pub text: String,
    pub submitted_at: i64,
    pub score: f32,
}

/// A page of matching answers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hits {
    pub total: usize,
    pub items: Vec<Hit>,
}

/// The question a query is about: a text question of a form of an organisation.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    pub organisation: &'a str,
    pub form_id: &'a str,
    pub question: &'a str,
}

/// The index, its writer and what its next commit will record.
pub struct SlangIndex {
    index: Index,
    fields: Fields,
    /// Adds take it shared (Tantivy's `add_document` and `delete_term` take `&self`); a commit
    /// takes it exclusively, so that every add it must include has returned before it starts.
    writer: RwLock<IndexWriter>,
    reader: IndexReader,
    /// What the writer holds beyond the last commit, and the ids of everything indexed.
    book: Mutex<Book>,
    /// The word and phrase counts of the last commit.
    counts: RwLock<Counts>,
    /// Per (topic, partition): the runtime's finished watermark, i.e. every record below it has
    /// been added to the writer (or dead-lettered). The next commit's payload.
    finished: Mutex<BTreeMap<String, BTreeMap<i32, i64>>>,
    /// The payload of the last commit: where a (re)assigned partition starts.
    committed: Mutex<Payload>,
    /// Records handled since the last commit (commit by size as well as by time).
    uncommitted: AtomicU64,
    /// The index's directory, where each commit leaves its counts' [`crate::snapshot`];
    /// `None` in memory.
    dir: Option<PathBuf>,
    /// The snapshot files of `dir`, as the last commit left them.
    snapshots: Mutex<Option<Snapshots>>,
}

/// The bookkeeping of the writer's uncommitted additions.
#[derive(Default)]
struct Book {
    /// Revisions added since the last commit, by response identity, with their answers'
    /// contributions to the counts: not visible to searchers yet.
    pending: HashMap<String, (i32, Vec<Arc<Contribution>>)>,
    /// The count changes that the next commit makes true, in order.
    changes: Vec<(Change, Arc<Contribution>)>,
    /// Hashes ([`id_hash`]) of the response identities in the index or in the writer.
    known: HashSet<u64, foldhash::fast::FixedState>,
}

/// A response's revision in the index, and what its answers contributed to the counts.
type Indexed = (i64, Vec<Arc<Contribution>>);

/// A response identity's hash in [`Book::known`].
fn id_hash(identity: &str) -> u64 {
    foldhash::fast::FixedState::default().hash_one(identity)
}

impl SlangIndex {
    /// Opens the index in `path`, or creates an empty one (which then rebuilds from the start
    /// of the topic). `writer_memory` is Tantivy's indexing budget, shared by its threads.
    pub fn open(path: &Path, writer_memory: usize) -> Result<Self, IndexError> {
        std::fs::create_dir_all(path).map_err(|source| IndexError::Create {
            path: path.display().to_string(),
            source,
        })?;
        let directory = MmapDirectory::open(path).map_err(|source| IndexError::Directory {
            path: path.display().to_string(),
            source,
        })?;
        let (schema, fields) = schema();
        let index = match Index::open_or_create(directory, schema) {
            Err(tantivy::TantivyError::SchemaError(_)) => {
                return Err(IndexError::Schema(path.display().to_string()));
            }
            other => other?,
        };
        Self::with_index(index, fields, writer_memory, Some(path.to_owned()))
    }

    /// An index in memory (tests and benchmarks of queries).
    pub fn in_memory(writer_memory: usize) -> Result<Self, IndexError> {
        let (schema, fields) = schema();
        Self::with_index(Index::create_in_ram(schema), fields, writer_memory, None)
    }

    fn with_index(
        mut index: Index,
        fields: Fields,
        writer_memory: usize,
        dir: Option<PathBuf>,
    ) -> Result<Self, IndexError> {
        // Tokenizers are not stored in the index: register them on every open.
        let tokenizers = TokenizerManager::default();
        tokenizers.register(WORDS, WordTokenizer);
        index.set_tokenizers(tokenizers);
        let metas = index.load_metas()?;
        let committed = match &metas.payload {
            Some(text) => serde_json::from_str(text).map_err(IndexError::Payload)?,
            None => Payload::default(),
        };
        let writer = index.writer(writer_memory)?;
        // Reloaded by our commits only: a searcher sees exactly what a commit recorded.
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        let slang = SlangIndex {
            index,
            fields,
            writer: RwLock::new(writer),
            reader,
            book: Mutex::new(Book::default()),
            counts: RwLock::new(Counts::default()),
            finished: Mutex::new(committed.offsets.clone()),
            committed: Mutex::new(committed),
            uncommitted: AtomicU64::new(0),
            dir,
            snapshots: Mutex::new(None),
        };
        slang.load(metas.opstamp, metas.payload.unwrap_or_default())?;
        Ok(slang)
    }

    /// Loads the counts and the known ids of the committed index (its commit is `opstamp`,
    /// with `payload`): the counts from that commit's snapshot, or else from the stored answers;
    /// the ids from the identity terms.
    fn load(&self, opstamp: u64, payload: String) -> Result<(), IndexError> {
        let started = Instant::now();
        let searcher = self.reader.searcher();
        let documents = searcher.num_docs();
        let tag = Tag {
            opstamp,
            documents,
            payload,
        };
        let snapshot = match &self.dir {
            Some(dir) => {
                let (snapshots, counts) = Snapshots::load(dir, &tag);
                *self.snapshots.lock().map_err(|_| IndexError::Poisoned)? = Some(snapshots);
                counts
            }
            None => None,
        };
        let from_snapshot = snapshot.is_some();
        let counts = match snapshot {
            Some(counts) => counts,
            None => self.stored_counts(&searcher)?,
        };
        let mut known = HashSet::default();
        for segment in searcher.segment_readers() {
            let identities = segment.inverted_index(self.fields.identity)?;
            let mut terms = identities.terms().stream()?;
            while terms.advance() {
                if let Ok(identity) = std::str::from_utf8(terms.key()) {
                    known.insert(id_hash(identity));
                }
            }
        }
        let counts_mib = counts.estimated_bytes() / (1 << 20);
        *self.counts.write().map_err(|_| IndexError::Poisoned)? = counts;
        self.book.lock().map_err(|_| IndexError::Poisoned)?.known = known;
        tracing::info!(
            documents,
            counts_mib,
            from_snapshot,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "Loaded the word counts of the slang index."
        );
        Ok(())
    }

    /// The counts of the stored answers of the commit `searcher` sees: every document read.
    fn stored_counts(&self, searcher: &Searcher) -> Result<Counts, IndexError> {
        let mut counts = Counts::default();
        for segment in searcher.segment_readers() {
            // Documents are read in order: one cached block at a time is enough.
            let store = segment.get_store_reader(1)?;
            for doc in store.iter::<TantivyDocument>(segment.alive_bitset()) {
                if let Some(contribution) = self.stored_contribution(&doc?) {
                    counts.apply(&contribution, Change::Add);
                }
            }
        }
        counts.refresh();
        Ok(counts)
    }

    /// The contribution of a stored document to the counts; `None` for a response's document
    /// without an answer.
    fn stored_contribution(&self, doc: &TantivyDocument) -> Option<Contribution> {
        let f = self.fields;
        let text = |field| doc.get_first(field).and_then(|v| v.as_str());
        let cities: Vec<String> = doc
            .get_all(f.city)
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect();
        Some(Contribution::new(
            text(f.scope)?.to_owned(),
            &cities,
            text(f.text)?,
        ))
    }

    /// The revision the response of `identity` has in the committed index, with its answers'
    /// contributions; `None` when the index does not hold it.
    fn committed_revision(
        &self,
        searcher: &Searcher,
        identity: &str,
    ) -> Result<Option<Indexed>, IndexError> {
        let query = TermQuery::new(
            Term::from_field_text(self.fields.identity, identity),
            IndexRecordOption::Basic,
        );
        let mut found: Option<Indexed> = None;
        // A response has one document per answered text question, all of one revision.
        for (_, address) in
            searcher.search(&query, &TopDocs::with_limit(10_000).order_by_score())?
        {
            let doc: TantivyDocument = searcher.doc(address)?;
            let revision = doc
                .get_first(self.fields.revision)
                .and_then(|v| v.as_i64())
                .unwrap_or(0);
            let (highest, contributions) = found.get_or_insert((revision, Vec::new()));
            *highest = (*highest).max(revision);
            contributions.extend(self.stored_contribution(&doc).map(Arc::new));
        }
        Ok(found)
    }

    /// Where each of `partitions` of `topic` starts: the last commit's offset, or 0 (the
    /// beginning) for a partition the index has never read.
    pub fn start_offsets(&self, topic: &str, partitions: &[i32]) -> HashMap<i32, i64> {
        let committed = self.committed.lock().map(|c| c.clone()).unwrap_or_default();
        let known = committed.offsets.get(topic);
        partitions
            .iter()
            .map(|&p| (p, known.and_then(|k| k.get(&p)).copied().unwrap_or(0)))
            .collect()
    }

    /// The runtime finished everything of `partition` below `offset`.
    pub fn finished_below(&self, topic: &str, partition: i32, offset: i64) {
        if let Ok(mut finished) = self.finished.lock() {
            let next = finished
                .entry(topic.to_owned())
                .or_default()
                .entry(partition)
                .or_insert(offset);
            // Never backwards: a partition reassigned from an earlier commit re-finishes offsets
            // that the writer already holds.
            *next = (*next).max(offset);
        }
    }

    /// Records handled since the last commit.
    pub fn uncommitted(&self) -> u64 {
        self.uncommitted.load(Ordering::Relaxed)
    }

    /// Whether a commit would record anything new.
    pub fn has_changes(&self) -> bool {
        if self.uncommitted() > 0 {
            return true;
        }
        let finished = self.finished.lock().map(|f| f.clone()).unwrap_or_default();
        self.committed
            .lock()
            .map(|c| c.offsets != finished)
            .unwrap_or(true)
    }

    /// The payload of the last commit.
    pub fn committed(&self) -> Payload {
        self.committed.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Notes that a record changed nothing in the index (a form without a slang action), so that
    /// commits still move the offsets on.
    pub fn note_handled(&self) {
        self.uncommitted.fetch_add(1, Ordering::Relaxed);
    }

    /// Indexes the entries (see the module's invariant on revisions).
    pub fn upsert(&self, entries: &[Entry]) -> Result<Vec<Upsert>, IndexError> {
        // What each answer adds to the counts, before taking any lock.
        let contributed: Vec<Vec<Arc<Contribution>>> = entries
            .iter()
            .map(|entry| {
                entry
                    .texts
                    .iter()
                    .map(|(question, text)| {
                        let scope = scope_key(&entry.organisation, &entry.form_id, question);
                        Arc::new(Contribution::new(scope, &entry.cities, text))
                    })
                    .collect()
            })
            .collect();
        let writer = self.writer.read().map_err(|_| IndexError::Poisoned)?;
        let searcher = self.reader.searcher();
        let mut book = self.book.lock().map_err(|_| IndexError::Poisoned)?;
        let mut outcomes = Vec::with_capacity(entries.len());
        for (entry, contributions) in entries.iter().zip(contributed) {
            self.uncommitted.fetch_add(1, Ordering::Relaxed);
            let identity = entry.identity();
            let hash = id_hash(identity);
            // The revision indexed (pending first: it replaced any committed one) and what its
            // answers contributed to the counts.
            let earlier = match book.pending.get(identity) {
                Some((revision, contributions)) => {
                    Some((i64::from(*revision), contributions.clone()))
                }
                None if book.known.contains(&hash) => {
                    self.committed_revision(&searcher, identity)?
                }
                None => None,
            };
            if earlier
                .as_ref()
                .is_some_and(|(r, _)| *r >= i64::from(entry.revision))
            {
                outcomes.push(Upsert::Stale);
                continue;
            }
            let indexed = earlier.is_some();
            let replaced = earlier.map(|(_, c)| c).unwrap_or_default();
            if indexed {
                writer.delete_term(Term::from_field_text(self.fields.identity, identity));
            }
            for document in self.documents(entry, &contributions) {
                writer.add_document(document)?;
            }
            book.changes
                .extend(replaced.into_iter().map(|c| (Change::Remove, c)));
            book.changes
                .extend(contributions.iter().map(|c| (Change::Add, c.clone())));
            book.pending
                .insert(identity.to_owned(), (entry.revision, contributions));
            book.known.insert(hash);
            outcomes.push(Upsert::Indexed);
        }
        Ok(outcomes)
    }

    /// One document per answered text question (`contributions` are their answers', in the
    /// order of the entry's texts); a response with none still gets one document without a
    /// question, which carries its revision (so that a later, older revision cannot bring back
    /// answers a correction removed) and matches no query.
    fn documents(
        &self,
        entry: &Entry,
        contributions: &[Arc<Contribution>],
    ) -> Vec<TantivyDocument> {
        let f = self.fields;
        let base = || {
            let mut doc = TantivyDocument::default();
            doc.add_text(f.identity, entry.identity());
            doc.add_text(f.response_id, &entry.response_id);
            doc.add_i64(f.revision, i64::from(entry.revision));
            doc.add_i64(f.submitted_at, entry.submitted_at);
            doc
        };
        let mut documents: Vec<TantivyDocument> = entry
            .texts
            .iter()
            .zip(contributions)
            .map(|((_, text), contribution)| {
                let mut doc = base();
                doc.add_text(f.scope, contribution.scope());
                for city in &entry.cities {
                    doc.add_text(f.city, city);
                }
                doc.add_text(f.text, text);
                doc.add_text(f.words, text);
                doc
            })
            .collect();
        if documents.is_empty() {
            documents.push(base());
        }
        documents
    }

    /// Commits what the writer holds, with the offsets finished so far as the payload, and makes
    /// it visible to searches and to the counts. Blocking: run it off the async runtime.
    pub fn commit(&self) -> Result<Payload, IndexError> {
        // Read before taking the writer: every record below these offsets was added before the
        // runtime learnt it was finished, so it is in the writer by now.
        let payload = Payload {
            offsets: self
                .finished
                .lock()
                .map_err(|_| IndexError::Poisoned)?
                .clone(),
        };
        let text = serde_json::to_string(&payload).map_err(IndexError::Payload)?;
        let started = Instant::now();
        let mut writer = self.writer.write().map_err(|_| IndexError::Poisoned)?;
        let handled = self.uncommitted.swap(0, Ordering::Relaxed);
        let mut prepared = writer.prepare_commit()?;
        prepared.set_payload(&text);
        let opstamp = prepared.commit()?;
        self.reader.reload()?;
        // Searchers now see these revisions: the look-up no longer needs them in memory, and the
        // counts take what they changed.
        let changes = {
            let mut book = self.book.lock().map_err(|_| IndexError::Poisoned)?;
            book.pending.clear();
            std::mem::take(&mut book.changes)
        };
        // Taken before the writer is let go, so that commits change the counts in their order;
        // indexing goes on meanwhile.
        let mut counts = self.counts.write().map_err(|_| IndexError::Poisoned)?;
        drop(writer);
        for (change, contribution) in &changes {
            counts.apply(contribution, *change);
        }
        counts.refresh();
        // Under the counts' lock: snapshots are written in the order of their commits.
        if let Some(snapshots) = self
            .snapshots
            .lock()
            .map_err(|_| IndexError::Poisoned)?
            .as_mut()
        {
            let tag = Tag {
                opstamp,
                documents: self.reader.searcher().num_docs(),
                payload: text,
            };
            if let Err(error) = snapshots.record(&tag, &changes, &counts) {
                tracing::warn!(%error, "Could not write the slang counts' snapshot; the next commit writes it whole.");
            }
        }
        drop(counts);
        if let Ok(mut committed) = self.committed.lock() {
            *committed = payload.clone();
        }
        tracing::debug!(
            records = handled,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "Committed the slang index."
        );
        Ok(payload)
    }

    /// The tag of the last commit, as [`crate::snapshot`] names it.
    #[cfg(test)]
    fn tag(&self) -> Tag {
        let metas = self.index.load_metas().expect("metas");
        Tag {
            opstamp: metas.opstamp,
            documents: self.documents_count(),
            payload: metas.payload.unwrap_or_default(),
        }
    }

    /// An estimate of the memory the word counts take, in bytes.
    pub fn counts_bytes(&self) -> usize {
        self.counts.read().map(|c| c.estimated_bytes()).unwrap_or(0)
    }

    /// Live documents (answers, plus one per response without an indexed answer).
    pub fn documents_count(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    fn scope_query(&self, scope: Scope<'_>, city: Option<&str>) -> Vec<(Occur, Box<dyn Query>)> {
        let f = self.fields;
        let term = |field, value: &str| -> (Occur, Box<dyn Query>) {
            (
                Occur::Must,
                Box::new(TermQuery::new(
                    Term::from_field_text(field, value),
                    IndexRecordOption::Basic,
                )),
            )
        };
        let mut clauses = vec![term(
            f.scope,
            &scope_key(scope.organisation, scope.form_id, scope.question),
        )];
        if let Some(city) = city {
            clauses.push(term(f.city, city));
        }
        clauses
    }

    /// The words of `text` as one query on the answers: a term, or a phrase of several words.
    /// `None` when `text` has no word.
    fn words_query(&self, text: &str) -> Option<Box<dyn Query>> {
        let terms: Vec<Term> = words(text)
            .map(|(_, _, w)| Term::from_field_text(self.fields.words, &w))
            .collect();
        match terms.len() {
            0 => None,
            1 => Some(Box::new(TermQuery::new(
                terms[0].clone(),
                IndexRecordOption::Basic,
            ))),
            _ => Some(Box::new(PhraseQuery::new(terms))),
        }
    }

    /// The most frequent words and two-word phrases of the answers, per city (the `cities` most
    /// answered cities) or for one city, `limit` of each; from the counts of the last commit.
    pub fn top_words(
        &self,
        scope: Scope<'_>,
        city: Option<&str>,
        cities: u32,
        limit: u32,
    ) -> Result<Vec<CityWords>, IndexError> {
        let key = scope_key(scope.organisation, scope.form_id, scope.question);
        let counts = self.counts.read().map_err(|_| IndexError::Poisoned)?;
        Ok(counts.top(&key, city, cities as usize, limit as usize))
    }

    /// The cities whose answers use `word` (a word, or a phrase of several), with the number of
    /// answers in each, most first. Empty when `word` has no word in it.
    pub fn cities_of(
        &self,
        scope: Scope<'_>,
        word: &str,
        limit: u32,
    ) -> Result<Vec<CityCount>, IndexError> {
        let Some(words) = self.words_query(word) else {
            return Ok(Vec::new());
        };
        let mut clauses = self.scope_query(scope, None);
        clauses.push((Occur::Must, words));
        let request = serde_json::json!({"cities": {"terms": {"field": "city", "size": limit}}});
        let result = self.aggregate(&BooleanQuery::new(clauses), request)?;
        let mut counts: Vec<CityCount> = buckets(&result["cities"])?
            .iter()
            .map(|b| CityCount {
                city: b["key"].as_str().unwrap_or_default().to_owned(),
                answers: b["doc_count"].as_u64().unwrap_or(0),
            })
            .collect();
        counts.sort_by(|a, b| b.answers.cmp(&a.answers).then_with(|| a.city.cmp(&b.city)));
        Ok(counts)
    }

    /// The answers containing every word of `query` (in that order, adjacent, when `query` is in
    /// double quotes), best match first; a page of `limit` from `offset`.
    pub fn search(
        &self,
        scope: Scope<'_>,
        query: &str,
        city: Option<&str>,
        limit: usize,
        offset: usize,
    ) -> Result<Hits, IndexError> {
        let mut clauses = self.scope_query(scope, city);
        let trimmed = query.trim();
        let phrase = trimmed.len() >= 2 && trimmed.starts_with('"') && trimmed.ends_with('"');
        if phrase {
            match self.words_query(trimmed.trim_matches('"')) {
                Some(q) => clauses.push((Occur::Must, q)),
                None => {
                    return Ok(Hits {
                        total: 0,
                        items: Vec::new(),
                    });
                }
            }
        } else {
            let mut any = false;
            for (_, _, word) in words(trimmed) {
                any = true;
                clauses.push((
                    Occur::Must,
                    Box::new(TermQuery::new(
                        Term::from_field_text(self.fields.words, &word),
                        IndexRecordOption::WithFreqs,
                    )),
                ));
            }
            if !any {
                return Ok(Hits {
                    total: 0,
                    items: Vec::new(),
                });
            }
        }
        let query = BooleanQuery::new(clauses);
        let searcher = self.reader.searcher();
        let (top, total) = searcher.search(
            &query,
            &(
                TopDocs::with_limit(limit.max(1))
                    .and_offset(offset)
                    .order_by_score(),
                Count,
            ),
        )?;
        let items = top
            .into_iter()
            .map(|(score, address)| self.hit(&searcher, address, score))
            .collect::<Result<_, _>>()?;
        Ok(Hits { total, items })
    }

    fn hit(&self, searcher: &Searcher, address: DocAddress, score: f32) -> Result<Hit, IndexError> {
        let f = self.fields;
        let doc: TantivyDocument = searcher.doc(address)?;
        let text = |field| {
            doc.get_first(field)
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_owned()
        };
        let number = |field| doc.get_first(field).and_then(|v| v.as_i64()).unwrap_or(0);
        Ok(Hit {
            response_id: text(f.response_id),
            revision: number(f.revision),
            cities: doc
                .get_all(f.city)
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            text: text(f.text),
            submitted_at: number(f.submitted_at),
            score,
        })
    }

    fn aggregate(
        &self,
        query: &dyn Query,
        request: serde_json::Value,
    ) -> Result<serde_json::Value, IndexError> {
        let aggregations: tantivy::aggregation::agg_req::Aggregations =
            serde_json::from_value(request).map_err(|e| IndexError::Aggregation(e.to_string()))?;
        let collector = tantivy::aggregation::AggregationCollector::from_aggs(
            aggregations,
            tantivy::aggregation::AggContextParams::new(
                Default::default(),
                self.index.tokenizers().clone(),
            ),
        );
        let result = self.reader.searcher().search(query, &collector)?;
        serde_json::to_value(result).map_err(|e| IndexError::Aggregation(e.to_string()))
    }
}

fn buckets(agg: &serde_json::Value) -> Result<&Vec<serde_json::Value>, IndexError> {
    agg["buckets"]
        .as_array()
        .ok_or_else(|| IndexError::Aggregation(agg.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, revision: i32, city: &str, text: &str) -> Entry {
        Entry::new(
            "acme".into(),
            "f".into(),
            id.into(),
            revision,
            1,
            vec![city.into()],
            vec![("slang".into(), text.into())],
        )
    }

    const SCOPE: Scope<'static> = Scope {
        organisation: "acme",
        form_id: "f",
        question: "slang",
    };

    #[test]
    fn words_per_city_cities_per_word_and_search() {
        let index = SlangIndex::in_memory(50_000_000).expect("an index");
        index
            .upsert(&[
                entry("1", 0, "pune", "क्या बात है"),
                entry("2", 0, "pune", "क्या बात है bhai!"),
                entry("3", 0, "chennai", "வணக்கம் bhai"),
            ])
            .expect("indexed");
        index.finished_below("responses", 0, 3);
        let payload = index.commit().expect("committed");
        assert_eq!(payload.offsets["responses"][&0], 3);

        let top = index.top_words(SCOPE, None, 10, 3).expect("top words");
        assert_eq!(top[0].city, "pune");
        assert_eq!(top[0].answers, 2);
        assert_eq!(top[0].words[0].answers, 2);
        assert!(["क्या", "बात", "है"].contains(&top[0].words[0].word.as_str()));
        assert_eq!(top[0].phrases[0].answers, 2);
        assert!(["क्या बात", "बात है"].contains(&top[0].phrases[0].word.as_str()));
        let cities = index.cities_of(SCOPE, "BHAI", 10).expect("cities");
        assert_eq!(cities.len(), 2);
        let hits = index
            .search(SCOPE, "क्या है", Some("pune"), 10, 0)
            .expect("hits");
        assert_eq!(hits.total, 2);
        let phrase = index
            .search(SCOPE, "\"है bhai\"", None, 10, 0)
            .expect("hits");
        assert_eq!(phrase.total, 1);
        assert_eq!(phrase.items[0].response_id, "2");
    }

    #[test]
    fn a_correction_replaces_and_an_older_revision_never_wins() {
        let index = SlangIndex::in_memory(50_000_000).expect("an index");
        index
            .upsert(&[entry("1", 0, "pune", "पुराना शब्द")])
            .expect("indexed");
        // Before and after a commit: the lookup covers pending and committed revisions.
        assert_eq!(
            index
                .upsert(&[entry("1", 1, "pune", "नया शब्द")])
                .expect("indexed"),
            [Upsert::Indexed]
        );
        index.commit().expect("committed");
        assert_eq!(
            index
                .upsert(&[entry("1", 0, "pune", "पुराना शब्द")])
                .expect("indexed"),
            [Upsert::Stale]
        );
        assert_eq!(
            index
                .upsert(&[entry("1", 1, "pune", "नया शब्द")])
                .expect("indexed"),
            [Upsert::Stale]
        );
        index.commit().expect("committed");
        assert!(index.cities_of(SCOPE, "पुराना", 10).expect("q").is_empty());
        assert_eq!(index.cities_of(SCOPE, "नया", 10).expect("q")[0].answers, 1);
        assert_eq!(index.documents_count(), 1);
    }

    /// (city, answers, words, phrases), with (word, answers) pairs.
    type Top = Vec<(String, u64, Vec<(String, u64)>, Vec<(String, u64)>)>;

    fn top(index: &SlangIndex) -> Top {
        let pairs = |w: &[WordCount]| w.iter().map(|w| (w.word.clone(), w.answers)).collect();
        index
            .top_words(SCOPE, None, 10, 10)
            .expect("top words")
            .into_iter()
            .map(|c| (c.city, c.answers, pairs(&c.words), pairs(&c.phrases)))
            .collect()
    }

    #[test]
    fn counts_follow_commits_and_corrections_and_are_rebuilt_on_open() {
        let dir = tempfile::tempdir().expect("a directory");
        let index = SlangIndex::open(dir.path(), 50_000_000).expect("an index");
        index
            .upsert(&[
                entry("1", 0, "pune", "पुराना शब्द"),
                entry("2", 0, "pune", "नया शब्द"),
            ])
            .expect("indexed");
        assert!(top(&index).is_empty(), "nothing counts before a commit");
        index.commit().expect("committed");
        assert_eq!(top(&index)[0].1, 2);
        // A correction of a committed answer, then one of a pending one.
        index
            .upsert(&[entry("1", 1, "delhi", "नया नया")])
            .expect("indexed");
        index
            .upsert(&[entry("1", 2, "delhi", "नया शब्द")])
            .expect("indexed");
        index.commit().expect("committed");
        let expected = vec![
            (
                "delhi".to_owned(),
                1,
                vec![("नया".to_owned(), 1), ("शब्द".to_owned(), 1)],
                vec![("नया शब्द".to_owned(), 1)],
            ),
            (
                "pune".to_owned(),
                1,
                vec![("नया".to_owned(), 1), ("शब्द".to_owned(), 1)],
                vec![("नया शब्द".to_owned(), 1)],
            ),
        ];
        assert_eq!(top(&index), expected);
        drop(index);
        let reopened = SlangIndex::open(dir.path(), 50_000_000).expect("reopened");
        assert_eq!(top(&reopened), expected);
        // The reopened index knows response 1: an older revision is stale.
        assert_eq!(
            reopened
                .upsert(&[entry("1", 1, "pune", "पुराना")])
                .expect("indexed"),
            [Upsert::Stale]
        );
    }

    #[test]
    fn a_snapshot_serves_only_its_own_commit_and_a_damaged_one_is_rebuilt() {
        let dir = tempfile::tempdir().expect("a directory");
        let log = dir.path().join(crate::snapshot::LOG);
        let index = SlangIndex::open(dir.path(), 50_000_000).expect("an index");
        index
            .upsert(&[entry("1", 0, "pune", "mast bhai")])
            .expect("indexed");
        // The first commit writes the base, the next ones append to its log.
        index.commit().expect("committed");
        index
            .upsert(&[
                entry("1", 1, "delhi", "naya"),
                entry("2", 0, "pune", "mast"),
            ])
            .expect("indexed");
        index.commit().expect("committed");
        let two_commits = std::fs::read(&log).expect("the log");
        index
            .upsert(&[entry("3", 0, "goa", "susegad bhai")])
            .expect("indexed");
        index.commit().expect("committed");
        let three_commits = std::fs::read(&log).expect("the log");
        assert!(
            three_commits.len() > two_commits.len(),
            "an entry per commit"
        );
        let expected = top(&index);
        let tag = index.tag();
        drop(index);
        let reopened = SlangIndex::open(dir.path(), 50_000_000).expect("reopened");
        assert_eq!(top(&reopened), expected, "the base and its log");
        drop(reopened);
        // A crash after the third commit, before its entry.
        std::fs::write(&log, &two_commits).expect("written");
        let reopened = SlangIndex::open(dir.path(), 50_000_000).expect("reopened");
        assert_eq!(
            top(&reopened),
            expected,
            "a log short of the commit is ignored"
        );
        drop(reopened);
        // A torn entry of the right commit.
        std::fs::write(&log, &three_commits[..three_commits.len() - 3]).expect("written");
        let reopened = SlangIndex::open(dir.path(), 50_000_000).expect("reopened");
        assert_eq!(top(&reopened), expected, "a torn entry is ignored");
        drop(reopened);
        // The snapshot of the commit is what the counts come from: a base of that commit with
        // other counts shows them.
        let mut other = Counts::default();
        other.apply(
            &Contribution::new(scope_key("acme", "f", "slang"), &["agra".into()], "wah"),
            Change::Add,
        );
        let (mut snapshots, _) = Snapshots::load(
            dir.path(),
            &Tag {
                opstamp: 0,
                documents: 0,
                payload: String::new(),
            },
        );
        snapshots.record(&tag, &[], &other).expect("written");
        let reopened = SlangIndex::open(dir.path(), 50_000_000).expect("reopened");
        assert_eq!(
            top(&reopened),
            vec![(
                "agra".to_owned(),
                1,
                vec![("wah".to_owned(), 1)],
                Vec::new()
            )]
        );
    }

    #[test]
    fn the_same_response_id_elsewhere_never_replaces_an_answer() {
        let elsewhere = |organisation: &str, form_id: &str, revision: i32| {
            Entry::new(
                organisation.into(),
                form_id.into(),
                "1".into(),
                revision,
                1,
                vec!["pune".into()],
                vec![("slang".into(), "kuch aur".into())],
            )
        };
        let expected = vec![(
            "pune".to_owned(),
            1,
            vec![("bhai".to_owned(), 1), ("mast".to_owned(), 1)],
            vec![("mast bhai".to_owned(), 1)],
        )];
        let dir = tempfile::tempdir().expect("a directory");
        let index = SlangIndex::open(dir.path(), 50_000_000).expect("an index");
        index
            .upsert(&[entry("1", 0, "pune", "mast bhai")])
            .expect("indexed");
        // Another organisation, and another form of the same one, reuse the id at higher
        // revisions: while acme's answer is pending, then once it is committed.
        assert_eq!(
            index
                .upsert(&[elsewhere("globex", "f", 3), elsewhere("acme", "g", 3)])
                .expect("indexed"),
            [Upsert::Indexed, Upsert::Indexed]
        );
        index.commit().expect("committed");
        assert_eq!(
            index
                .upsert(&[elsewhere("globex", "f", 4), elsewhere("acme", "g", 4)])
                .expect("indexed"),
            [Upsert::Indexed, Upsert::Indexed]
        );
        index.commit().expect("committed");
        assert_eq!(top(&index), expected);
        assert_eq!(
            index.search(SCOPE, "mast", None, 10, 0).expect("q").total,
            1
        );
        drop(index);
        // Reopened, the index still tells the three apart.
        let reopened = SlangIndex::open(dir.path(), 50_000_000).expect("reopened");
        assert_eq!(top(&reopened), expected);
        assert_eq!(
            reopened
                .upsert(&[entry("1", 0, "pune", "mast bhai")])
                .expect("indexed"),
            [Upsert::Stale]
        );
        assert_eq!(
            reopened
                .upsert(&[elsewhere("globex", "f", 5)])
                .expect("indexed"),
            [Upsert::Indexed]
        );
        reopened.commit().expect("committed");
        assert_eq!(top(&reopened), expected);
        assert_eq!(reopened.documents_count(), 3);
    }

    #[test]
    fn other_organisations_and_forms_see_nothing() {
        let index = SlangIndex::in_memory(50_000_000).expect("an index");
        index
            .upsert(&[entry("1", 0, "pune", "mast")])
            .expect("indexed");
        index.commit().expect("committed");
        let other = Scope {
            organisation: "globex",
            ..SCOPE
        };
        assert!(index.cities_of(other, "mast", 10).expect("q").is_empty());
        assert_eq!(
            index.search(other, "mast", None, 10, 0).expect("q").total,
            0
        );
    }
}

#[cfg(test)]
mod crash_model {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn crashes_at_random_moments_keep_counts_equal_to_the_latest_revisions() {
        let seed: u64 = std::env::var("SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(7);
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let cities = ["a", "b", "c"];
        // The topic: revision 0 of each response, and a correction of some a little later.
        let mut log: Vec<Entry> = Vec::new();
        for i in 0..6000 {
            let city = cities[rng.random_range(0..3)];
            let text = |rng: &mut rand::rngs::StdRng| format!("w{} x", rng.random_range(0..5));
            let mut texts = Vec::new();
            if rng.random_bool(0.8) {
                texts.push(("slang".to_owned(), text(&mut rng)));
            }
            log.push(Entry::new(
                "acme".into(),
                "f".into(),
                format!("{i}"),
                0,
                1,
                vec![city.into()],
                texts,
            ));
            if rng.random_bool(0.3) {
                let at = log.len() - rng.random_range(0..50).min(log.len() - 1);
                let correction = Entry::new(
                    "acme".into(),
                    "f".into(),
                    format!("{i}"),
                    1,
                    1,
                    vec![city.into()],
                    vec![("slang".to_owned(), text(&mut rng))],
                );
                // Sometimes before its revision 0 (another partition's order).
                log.insert(at, correction);
            }
        }
        let mut latest: HashMap<String, &Entry> = HashMap::new();
        for e in &log {
            let keep = latest
                .get(e.identity())
                .is_none_or(|l| l.revision < e.revision);
            if keep {
                latest.insert(e.identity().to_owned(), e);
            }
        }
        let mut expected: BTreeMap<String, u64> = BTreeMap::new();
        for e in latest.values() {
            if !e.texts.is_empty() {
                *expected.entry(e.cities[0].clone()).or_default() += 1;
            }
        }
        let answers = |index: &SlangIndex| -> BTreeMap<String, u64> {
            index
                .top_words(SCOPE, None, 10, 1)
                .expect("top")
                .into_iter()
                .map(|c| (c.city, c.answers))
                .collect()
        };
        let dir = tempfile::tempdir().expect("a directory");
        let mut index = SlangIndex::open(dir.path(), 15_000_000).expect("an index");
        let mut pos = 0usize;
        let mut crashes = 0;
        while pos < log.len() {
            let n = rng.random_range(1..40).min(log.len() - pos);
            index.upsert(&log[pos..pos + n]).expect("indexed");
            pos += n;
            index.finished_below("t", 0, pos as i64);
            if rng.random_bool(0.2) {
                index.commit().expect("committed");
            }
            if rng.random_bool(0.03) {
                crashes += 1;
                crash(index);
                index = SlangIndex::open(dir.path(), 15_000_000).expect("reopened");
                pos = index.start_offsets("t", &[0])[&0] as usize;
                // Sometimes the record before the commit's offsets is read again too.
                pos = pos.saturating_sub(rng.random_range(0..3));
            }
        }
        index.commit().expect("committed");
        assert!(crashes > 3);
        assert_eq!(answers(&index), expected, "live");
        crash(index);
        let index = SlangIndex::open(dir.path(), 15_000_000).expect("reopened");
        assert_eq!(answers(&index), expected, "reopened");
    }

    const SCOPE: Scope<'static> = Scope {
        organisation: "acme",
        form_id: "f",
        question: "slang",
    };

    /// Drops the index without a commit, as a crash would; its merges end first, since an
    /// index reopened in the same process would otherwise read files they delete (a killed
    /// process merges nothing more).
    fn crash(index: SlangIndex) {
        let SlangIndex { writer, .. } = index;
        writer
            .into_inner()
            .expect("a writer")
            .wait_merging_threads()
            .expect("merges ended");
    }
}

/// How long opening an index of many responses takes, with its counts' snapshot and without
/// (the full rebuild every open did before snapshots). A measurement, not a test: run with
/// `SLANG_OPEN_RESPONSES=200000 cargo test --release -p formstream-slang --lib open_time -- --ignored --nocapture`.
#[cfg(test)]
mod open_time {
    use super::*;

    #[test]
    #[ignore = "a measurement: builds an index of SLANG_OPEN_RESPONSES responses"]
    fn open_time_with_and_without_the_snapshot() {
        let responses: usize = std::env::var("SLANG_OPEN_RESPONSES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(200_000);
        let dir = tempfile::tempdir().expect("a directory");
        let index = SlangIndex::open(dir.path(), 128_000_000).expect("an index");
        let vocabulary: Vec<String> = (0..300).map(|i| format!("shabd{i}")).collect();
        let cities = [
            "pune", "latur", "nagpur", "thane", "satara", "nashik", "solapur", "kolhapur",
        ];
        let mut seed = 1u64;
        let mut next = move |n: usize| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 33) as usize) % n
        };
        for chunk in (0..responses).collect::<Vec<_>>().chunks(512) {
            let entries: Vec<Entry> = chunk
                .iter()
                .map(|&i| {
                    let mut sentence = |words: usize| {
                        (0..words)
                            .map(|_| vocabulary[next(vocabulary.len())].as_str())
                            .collect::<Vec<_>>()
                            .join(" ")
                    };
                    let texts = vec![
                        ("comments".to_owned(), sentence(8)),
                        ("local_words".to_owned(), sentence(3)),
                    ];
                    Entry::new(
                        "acme".into(),
                        format!("form-{}", i % 200),
                        format!("response-{i}"),
                        0,
                        1,
                        vec![cities[i % cities.len()].to_owned()],
                        texts,
                    )
                })
                .collect();
            index.upsert(&entries).expect("indexed");
            // Commits as the processor makes them: a base, then log entries (and new bases).
            if chunk[0] % 16_384 == 0 {
                index.commit().expect("committed");
            }
        }
        let started = Instant::now();
        index.commit().expect("committed");
        let commit = started.elapsed();
        let log_bytes = std::fs::metadata(dir.path().join(crate::snapshot::LOG))
            .expect("a log")
            .len();
        let documents = index.documents_count();
        drop(index);
        let timed = || {
            let started = Instant::now();
            let index = SlangIndex::open(dir.path(), 128_000_000).expect("reopened");
            let elapsed = started.elapsed();
            assert_eq!(index.documents_count(), documents);
            elapsed
        };
        let with_snapshot: Vec<_> = (0..3).map(|_| timed()).collect();
        let snapshot_bytes = std::fs::metadata(dir.path().join(crate::snapshot::BASE))
            .expect("a snapshot")
            .len();
        let without: Vec<_> = (0..3)
            .map(|_| {
                std::fs::remove_file(dir.path().join(crate::snapshot::BASE)).ok();
                timed()
            })
            .collect();
        println!(
            "responses {responses}, documents {documents}, snapshot {snapshot_bytes} bytes and log {log_bytes} bytes, last commit {commit:?}; open with the snapshot {with_snapshot:?}, without (rebuilt from the stored answers) {without:?}"
        );
    }
}

/// An audit of an index directory left by a run (the processor stopped or killed): documents
/// of one response at two revisions, two documents of one (response, question), and whether the
/// counts it opens with (its saved snapshot, when it has one) equal those of its stored answers.
/// A diagnostic, not a test: run with
/// `SLANG_AUDIT_DIR=<index dir> cargo test -p formstream-slang --lib audit -- --ignored --nocapture`.
#[cfg(test)]
mod audit {
    use super::*;

    #[test]
    #[ignore = "a diagnostic of the index in SLANG_AUDIT_DIR"]
    fn audit_an_index_directory() {
        let Ok(dir) = std::env::var("SLANG_AUDIT_DIR") else {
            panic!("set SLANG_AUDIT_DIR to an index directory (a copy: opening may merge)");
        };
        let index = SlangIndex::open(Path::new(&dir), 64_000_000).expect("the index");
        let searcher = index.reader.searcher();
        let f = index.fields;
        // (identity, scope) -> revisions of its documents; identity -> revisions.
        let mut answers: HashMap<(String, String), Vec<i64>> = HashMap::new();
        let mut revisions: HashMap<String, HashSet<i64>> = HashMap::new();
        for segment in searcher.segment_readers() {
            let store = segment.get_store_reader(1).expect("a store");
            for doc in store.iter::<TantivyDocument>(segment.alive_bitset()) {
                let doc = doc.expect("a document");
                let text = |field| {
                    doc.get_first(field)
                        .and_then(|v| v.as_str())
                        .unwrap_or_default()
                        .to_owned()
                };
                let revision = doc
                    .get_first(f.revision)
                    .and_then(|v| v.as_i64())
                    .unwrap_or(-1);
                revisions
                    .entry(text(f.identity))
                    .or_default()
                    .insert(revision);
                answers
                    .entry((text(f.identity), text(f.scope)))
                    .or_default()
                    .push(revision);
            }
        }
        let mixed: Vec<_> = revisions.iter().filter(|(_, r)| r.len() > 1).collect();
        let doubled: Vec<_> = answers.iter().filter(|(_, r)| r.len() > 1).collect();
        println!(
            "documents {}, responses {}, at two revisions or more {} (first {:?}), answers doubled {} (first {:?})",
            searcher.num_docs(),
            revisions.len(),
            mixed.len(),
            mixed.iter().take(5).collect::<Vec<_>>(),
            doubled.len(),
            doubled.iter().take(5).collect::<Vec<_>>()
        );
        let stored = index.stored_counts(&searcher).expect("counts");
        let opened = index.counts.read().expect("counts");
        let scopes: HashSet<&String> = answers.keys().map(|(_, scope)| scope).collect();
        let mut differ = 0;
        for scope in scopes.into_iter().filter(|s| !s.is_empty()) {
            let per_city = |counts: &Counts| -> BTreeMap<String, u64> {
                counts
                    .top(scope, None, usize::MAX, 0)
                    .into_iter()
                    .map(|c| (c.city, c.answers))
                    .collect()
            };
            let (a, b) = (per_city(&stored), per_city(&opened));
            if a != b {
                differ += 1;
                println!("{scope:?}: stored answers {a:?}, counts opened with {b:?}");
            }
        }
        println!("questions whose opened counts differ from the stored answers: {differ}");
    }
}
