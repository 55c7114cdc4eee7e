//! The codec: topic values to bytes and back, in Avro single-object encoding or the Confluent wire
//! format.
//!
//! - Single-object: `0xC3 0x01`, the 8-byte little-endian CRC-64-AVRO (Rabin) fingerprint of the
//!   writer schema's Parsing Canonical Form, then the datum. Used when no registry is configured.
//! - Confluent: `0x00`, the 4-byte big-endian registry id of the writer schema, then the datum.
//!   Subjects follow the TopicNameStrategy: `<topic>-value`.
//!
//! Decoding detects the format from the first byte, finds the writer schema (by fingerprint, or by
//! id from the registry, fetched once and cached) and resolves it to the reader's compiled-in
//! schema, so a field added with a default reads both ways.
//!
//! Invariant: every payload names the exact schema it was written with, and a payload is never
//! decoded with any other writer schema; fingerprints and registry ids are computed or fetched
//! once, never per record. Bad input (garbage, truncation, unknown schemas) is an error, never a
//! panic or an unbounded allocation (see [`guard`]).

mod guard;
mod record;
mod registry;

use std::any::TypeId;
use std::collections::HashMap;
use std::fmt;
use std::io::BufRead;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use apache_avro::headers::{HeaderBuilder, RabinFingerprintHeader};
use apache_avro::rabin::Rabin;
use apache_avro::types::Value;
use apache_avro::{GenericSingleObjectReader, Schema};
use tokio::sync::OnceCell;

pub use record::AvroRecord;
use registry::{Fetched, RegistryClient};
pub use registry::{RegistryConfig, RegistryError, Secret, without_userinfo};

/// First bytes of a single-object payload.
const SINGLE_OBJECT_MAGIC: [u8; 2] = [0xC3, 0x01];
/// Single-object header: magic and an 8-byte fingerprint.
const SINGLE_OBJECT_HEADER_LEN: usize = 10;
/// First byte of a Confluent wire-format payload.
const CONFLUENT_MAGIC: u8 = 0x00;
/// Confluent header: magic and a 4-byte schema id.
const CONFLUENT_HEADER_LEN: usize = 5;
/// First guess for an encoded record's size; encoders learn the real size as they go.
const INITIAL_SIZE_HINT: usize = 256;
/// Cap on the learned size hint, so one huge record does not make every later buffer huge.
const MAX_SIZE_HINT: usize = 64 * 1024;

/// A Rabin fingerprint, little-endian as it appears on the wire.
type Fingerprint = [u8; 8];

/// A subject and the fingerprint of a schema registered under it.
type SubjectSchema = (String, Fingerprint);

/// How a payload names its writer schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SchemaId {
    /// Single-object encoding: CRC-64-AVRO fingerprint of the canonical form.
    Fingerprint(u64),
    /// Confluent wire format: the Schema Registry's global id.
    RegistryId(u32),
}

impl fmt::Display for SchemaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SchemaId::Fingerprint(fp) => write!(f, "single-object fingerprint {fp:#018x}"),
            SchemaId::RegistryId(id) => write!(f, "schema registry id {id}"),
        }
    }
}

/// What went wrong encoding or decoding.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The value does not fit its schema (a bug on the writing side).
    #[error("cannot encode as Avro: {0}")]
    Encode(String),
    /// The payload is not a valid datum of its writer schema, or cannot be read as the requested
    /// type: garbage, truncation, or a record of another type.
    #[error("cannot decode payload: {0}")]
    Decode(String),
    /// The payload names a writer schema this codec does not know and cannot fetch.
    #[error("unknown writer schema: {0} is not known to this codec or its registry")]
    UnknownSchema(SchemaId),
    /// A Confluent payload reached a codec without a registry.
    #[error(
        "payload is in the Confluent wire format (schema registry id {0}), but no schema registry is configured"
    )]
    NoRegistry(u32),
    /// Talking to the Schema Registry failed.
    #[error("schema registry: {0}")]
    Registry(#[from] RegistryError),
    /// The codec was asked for something that cannot work, e.g. an empty topic name.
    #[error("invalid codec usage: {0}")]
    Config(String),
}

impl CodecError {
    /// Whether trying again later may succeed: only registry timeouts, transport errors, 408, 429
    /// and 5xx. Everything else is a property of the payload or the code.
    pub fn is_retriable(&self) -> bool {
        match self {
            CodecError::Registry(e) => e.is_retriable(),
            _ => false,
        }
    }
}

/// Encodes and decodes topic values. Cheap to clone; all clones share caches.
#[derive(Clone)]
pub struct Codec {
    inner: Arc<Inner>,
}

struct Inner {
    /// `None`: single-object encoding for writes, and Confluent payloads cannot be read.
    registry: Option<RegistryClient>,
    /// Writer schemas known by fingerprint: the compiled-in ones, extra ones given at
    /// construction, and any whose encoder this codec built.
    by_fingerprint: RwLock<HashMap<Fingerprint, Arc<Writer>>>,
    /// Registry ids seen so far. The cell makes concurrent decoders of a new id share one fetch.
    /// An id whose fetch failed is removed, so garbage ids do not accumulate.
    by_id: Mutex<HashMap<u32, Arc<OnceCell<Arc<Writer>>>>>,
    /// Ids this codec registered, by subject and fingerprint, so each schema is registered once.
    registered: Mutex<HashMap<SubjectSchema, Arc<OnceCell<u32>>>>,
    /// Reader types' schemas, prepared once per type.
    readers: RwLock<HashMap<TypeId, Arc<Reader>>>,
}

/// A record type's own schema, prepared for decoding into it and encoding from it.
struct Reader {
    fingerprint: Fingerprint,
    /// The same schema for serde_avro_fast, which deserializes a datum straight into the reader
    /// type (no intermediate `Value` tree; ~10x cheaper than apache-avro's `read_value` +
    /// `from_value`) and serializes one straight from it. Decoding uses it only when the
    /// payload's writer schema *is* the reader's schema: schema resolution between different
    /// versions stays with apache-avro. `None` only if the crate cannot parse the schema, in which
    /// case every decode takes the resolving path and every encode apache-avro's serializer.
    direct: Option<serde_avro_fast::Schema>,
}

impl Reader {
    fn of<T: AvroRecord>() -> Reader {
        let direct = match T::SCHEMA_JSON.parse::<serde_avro_fast::Schema>() {
            Ok(schema) => Some(schema),
            Err(e) => {
                tracing::warn!(record = T::FULL_NAME, error = %e, "schema not usable for direct decoding; decoding through apache-avro");
                None
            }
        };
        Reader {
            fingerprint: fingerprint(T::schema()),
            direct,
        }
    }
}

/// A writer schema, ready to read payloads written with it.
struct Writer {
    schema: Schema,
    /// Its named types, for the guard's `Ref` lookups.
    names: guard::Names,
    /// Reads the header this payload format puts before the datum, then the datum.
    reader: GenericSingleObjectReader,
    header_len: usize,
    fingerprint: Fingerprint,
    /// Full name of the top-level record, to refuse a payload of another record type early.
    full_name: Option<String>,
}

impl Writer {
    fn new(schema: Schema, header: impl HeaderBuilder, header_len: usize) -> Result<Self, String> {
        let mut names = guard::Names::new();
        guard::collect_names(&schema, &mut names);
        let fingerprint = fingerprint(&schema);
        let reader = GenericSingleObjectReader::new_with_header_builder(schema.clone(), header)
            .map_err(|e| e.to_string())?;
        let full_name = schema.name().map(|n| n.fullname(None));
        Ok(Writer {
            schema,
            names,
            reader,
            header_len,
            fingerprint,
            full_name,
        })
    }
}

/// The Confluent header for a schema id, for apache-avro's single-object reader.
struct ConfluentHeader(u32);

impl HeaderBuilder for ConfluentHeader {
    fn build_header(&self) -> Vec<u8> {
        confluent_header(self.0).to_vec()
    }
}

fn confluent_header(id: u32) -> [u8; CONFLUENT_HEADER_LEN] {
    let [a, b, c, d] = id.to_be_bytes();
    [CONFLUENT_MAGIC, a, b, c, d]
}

/// CRC-64-AVRO of the Parsing Canonical Form, as apache-avro computes it (little-endian bytes).
fn fingerprint(schema: &Schema) -> Fingerprint {
    let bytes = schema.fingerprint::<Rabin>().bytes;
    let mut fp = [0u8; 8];
    fp.copy_from_slice(&bytes[..8]);
    fp
}

impl Codec {
    /// Avro single-object encoding with the compiled-in schemas.
    pub fn single_object() -> Codec {
        Codec::build(None, Vec::new())
    }

    /// Single-object encoding that also reads data written with `extra` schemas (older or newer
    /// versions of the records), recognised by their fingerprints. A schema that cannot be
    /// prepared for reading is skipped with a warning.
    pub fn single_object_with_writers(extra: Vec<Schema>) -> Codec {
        Codec::build(None, extra)
    }

    /// Confluent wire format against the Schema Registry in `config`. Nothing is contacted yet:
    /// [`Codec::encoder`] registers, [`Codec::decode`] fetches.
    pub fn with_registry(config: RegistryConfig) -> Result<Codec, CodecError> {
        let client = RegistryClient::new(config)?;
        Ok(Codec::build(Some(client), Vec::new()))
    }

    fn build(registry: Option<RegistryClient>, extra: Vec<Schema>) -> Codec {
        let mut by_fingerprint = HashMap::new();
        let compiled = record::compiled_in().into_iter().map(|(_, s)| s.clone());
        for schema in compiled.chain(extra) {
            let header = RabinFingerprintHeader::from_schema(&schema);
            match Writer::new(schema, header, SINGLE_OBJECT_HEADER_LEN) {
                Ok(w) => {
                    by_fingerprint.insert(w.fingerprint, Arc::new(w));
                }
                Err(error) => {
                    tracing::warn!(%error, "Skipping a writer schema that cannot be read.")
                }
            }
        }
        Codec {
            inner: Arc::new(Inner {
                registry,
                by_fingerprint: RwLock::new(by_fingerprint),
                by_id: Mutex::new(HashMap::new()),
                registered: Mutex::new(HashMap::new()),
                readers: RwLock::new(HashMap::new()),
            }),
        }
    }

    /// "single-object" or "confluent(<registry url>)".
    pub fn describe(&self) -> String {
        match &self.inner.registry {
            None => "single-object".to_owned(),
            Some(r) => format!("confluent({})", r.url()),
        }
    }

    /// Prepares a synchronous encoder of `T` for `topic`. With a registry, registers `T`'s schema
    /// under `<topic>-value` (or finds its id) once per codec, within the registry timeout.
    pub async fn encoder<T: AvroRecord>(&self, topic: &str) -> Result<Encoder<T>, CodecError> {
        if topic.is_empty() {
            return Err(CodecError::Config("the topic name is empty".into()));
        }
        let fp = self.reader_fingerprint::<T>();
        let header = match &self.inner.registry {
            None => {
                self.learn_fingerprint(T::schema(), fp)?;
                RabinFingerprintHeader::from_schema(T::schema()).build_header()
            }
            Some(registry) => {
                let subject = format!("{topic}-value");
                let cell = lock(&self.inner.registered)
                    .entry((subject.clone(), fp))
                    .or_default()
                    .clone();
                let id = *cell
                    .get_or_try_init(|| registry.register(&subject, T::SCHEMA_JSON))
                    .await?;
                tracing::debug!(%subject, id, record = T::FULL_NAME, "Schema registered.");
                confluent_header(id).to_vec()
            }
        };
        Ok(Encoder {
            inner: Arc::new(EncoderInner {
                header,
                reader: self.reader::<T>(),
                size_hint: AtomicUsize::new(INITIAL_SIZE_HINT),
            }),
            _record: PhantomData,
        })
    }

    /// A decoder of `T`, prepared once: see [`Decoder`].
    pub fn decoder<T: AvroRecord>(&self) -> Decoder<T> {
        let reader = self.reader::<T>();
        let own = match &reader.direct {
            Some(_) => self.learn_fingerprint(T::schema(), reader.fingerprint).ok(),
            None => None,
        };
        Decoder {
            codec: self.clone(),
            reader,
            own,
            _record: PhantomData,
        }
    }

    /// Decodes a payload in either format into `T`, resolving its writer schema to `T::schema()`.
    pub async fn decode<T: AvroRecord>(&self, payload: &[u8]) -> Result<T, CodecError> {
        let writer = self.writer_of::<T>(payload).await?;
        let datum = payload.get(writer.header_len..).unwrap_or_default();
        if let Some(name) = &writer.full_name
            && name != T::FULL_NAME
        {
            return Err(CodecError::Decode(format!(
                "the payload holds a {name}, not a {}",
                T::FULL_NAME
            )));
        }
        let reader = self.reader::<T>();
        if writer.fingerprint == reader.fingerprint
            && let Some(schema) = &reader.direct
        {
            return decode_direct::<T>(datum, schema, &writer);
        }
        guard::check(&writer.schema, &writer.names, datum).map_err(CodecError::Decode)?;
        let value = writer
            .reader
            .read_value(&mut &payload[..])
            .map_err(|e| CodecError::Decode(format!("{}: {e}", T::FULL_NAME)))?;
        let value = if writer.fingerprint == reader.fingerprint {
            value
        } else {
            value.resolve(T::schema()).map_err(|e| {
                CodecError::Decode(format!(
                    "writer schema of this payload does not resolve to {}: {e}",
                    T::FULL_NAME
                ))
            })?
        };
        from_value::<T>(&value)
    }

    /// The writer schema the payload's header names.
    async fn writer_of<T: AvroRecord>(&self, payload: &[u8]) -> Result<Arc<Writer>, CodecError> {
        match payload.first() {
            None => Err(CodecError::Decode("the payload is empty".into())),
            Some(&0xC3) => {
                if payload.len() < SINGLE_OBJECT_HEADER_LEN || payload[..2] != SINGLE_OBJECT_MAGIC {
                    return Err(CodecError::Decode(format!(
                        "truncated or malformed single-object header ({} bytes, expected C3 01 and an 8-byte fingerprint)",
                        payload.len().min(SINGLE_OBJECT_HEADER_LEN)
                    )));
                }
                let mut fp = [0u8; 8];
                fp.copy_from_slice(&payload[2..SINGLE_OBJECT_HEADER_LEN]);
                if let Some(w) = read(&self.inner.by_fingerprint).get(&fp) {
                    return Ok(w.clone());
                }
                // The reader's own schema is always a valid writer schema.
                if fp == self.reader_fingerprint::<T>() {
                    return self.learn_fingerprint(T::schema(), fp);
                }
                Err(CodecError::UnknownSchema(SchemaId::Fingerprint(
                    u64::from_le_bytes(fp),
                )))
            }
            Some(&CONFLUENT_MAGIC) => {
                let Some(header) = payload.get(..CONFLUENT_HEADER_LEN) else {
                    return Err(CodecError::Decode(format!(
                        "truncated Confluent header ({} of {CONFLUENT_HEADER_LEN} bytes)",
                        payload.len()
                    )));
                };
                let id = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
                Box::pin(self.writer_by_id(id)).await
            }
            Some(&other) => Err(CodecError::Decode(format!(
                "unknown format: first byte {other:#04x} is neither 0xc3 (single-object) nor 0x00 (Confluent)"
            ))),
        }
    }

    async fn writer_by_id(&self, id: u32) -> Result<Arc<Writer>, CodecError> {
        let Some(registry) = &self.inner.registry else {
            return Err(CodecError::NoRegistry(id));
        };
        let cell = lock(&self.inner.by_id).entry(id).or_default().clone();
        if let Some(w) = cell.get() {
            return Ok(w.clone());
        }
        let fetched = cell
            .get_or_try_init(|| async {
                let json = match registry.schema_by_id(id).await? {
                    Fetched::Schema(json) => json,
                    Fetched::NotFound => {
                        return Err(CodecError::UnknownSchema(SchemaId::RegistryId(id)));
                    }
                };
                let schema = Schema::parse_str(&json).map_err(|e| {
                    CodecError::Registry(RegistryError::InvalidBody {
                        endpoint: format!("GET schema id {id}"),
                        reason: format!("the schema does not parse as Avro: {e}"),
                    })
                })?;
                let writer = Writer::new(schema, ConfluentHeader(id), CONFLUENT_HEADER_LEN)
                    .map_err(|e| CodecError::Decode(format!("schema id {id}: {e}")))?;
                Ok(Arc::new(writer))
            })
            .await;
        match fetched {
            Ok(w) => Ok(w.clone()),
            Err(e) => {
                let mut by_id = lock(&self.inner.by_id);
                if by_id.get(&id).is_some_and(|c| !c.initialized()) {
                    by_id.remove(&id);
                }
                Err(e)
            }
        }
    }

    /// Adds a schema to the fingerprint table (if missing) and returns its reader.
    fn learn_fingerprint(
        &self,
        schema: &Schema,
        fp: Fingerprint,
    ) -> Result<Arc<Writer>, CodecError> {
        if let Some(w) = read(&self.inner.by_fingerprint).get(&fp) {
            return Ok(w.clone());
        }
        let header = RabinFingerprintHeader::from_schema(schema);
        let w = Writer::new(schema.clone(), header, SINGLE_OBJECT_HEADER_LEN).map_err(|e| {
            CodecError::Config(format!("schema cannot be prepared for reading: {e}"))
        })?;
        Ok(write(&self.inner.by_fingerprint)
            .entry(fp)
            .or_insert(Arc::new(w))
            .clone())
    }

    fn reader_fingerprint<T: AvroRecord>(&self) -> Fingerprint {
        self.reader::<T>().fingerprint
    }

    fn reader<T: AvroRecord>(&self) -> Arc<Reader> {
        let key = TypeId::of::<T>();
        if let Some(reader) = read(&self.inner.readers).get(&key) {
            return reader.clone();
        }
        let reader = Arc::new(Reader::of::<T>());
        write(&self.inner.readers).insert(key, reader.clone());
        reader
    }
}

/// Decodes payloads into one record type, as [`Codec::decode`] does, with the look-ups of the
/// common case done once: a payload in single-object encoding whose writer schema is `T`'s own
/// (what this version of formstream writes) is decoded straight away, without taking the
/// codec's locks or reference counts, which every thread decoding at once would contend for.
/// Any other payload goes through [`Codec::decode`].
pub struct Decoder<T> {
    codec: Codec,
    reader: Arc<Reader>,
    /// `T`'s own schema as a writer schema; `None` when it cannot take the direct path.
    own: Option<Arc<Writer>>,
    _record: PhantomData<fn() -> T>,
}

impl<T: AvroRecord> Decoder<T> {
    pub async fn decode(&self, payload: &[u8]) -> Result<T, CodecError> {
        if let (Some(own), Some(schema)) = (&self.own, &self.reader.direct)
            && payload.get(..2) == Some(SINGLE_OBJECT_MAGIC.as_slice())
            && payload.get(2..SINGLE_OBJECT_HEADER_LEN) == Some(self.reader.fingerprint.as_slice())
        {
            return decode_direct::<T>(&payload[SINGLE_OBJECT_HEADER_LEN..], schema, own);
        }
        self.codec.decode(payload).await
    }
}

impl<T> fmt::Debug for Decoder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decoder")
            .field("codec", &self.codec)
            .field("direct", &self.own.is_some())
            .finish()
    }
}

impl fmt::Debug for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Codec").field(&self.describe()).finish()
    }
}

/// Decodes a datum written with the reader's own schema, straight into `T`.
///
/// No guard pass on the way in: this decoder reads from the slice with bounds checks, so hostile
/// lengths and truncation end in an error, never in an allocation (the bad-input tests cover this
/// path). Only when it fails, or leaves bytes over, does the guard run, to name the problem as
/// precisely as the resolving path does.
fn decode_direct<T: AvroRecord>(
    datum: &[u8],
    schema: &serde_avro_fast::Schema,
    writer: &Writer,
) -> Result<T, CodecError> {
    let mut state = serde_avro_fast::de::DeserializerState::from_slice(datum, schema);
    let decoded = T::deserialize(state.deserializer());
    let left_over = state.into_reader().fill_buf().map_or(0, |rest| rest.len());
    match decoded {
        Ok(value) if left_over == 0 => Ok(value),
        outcome => {
            guard::check(&writer.schema, &writer.names, datum).map_err(CodecError::Decode)?;
            Err(CodecError::Decode(match outcome {
                Err(e) => format!("{}: {e}", T::FULL_NAME),
                Ok(_) => format!(
                    "{}: {left_over} trailing bytes after the datum",
                    T::FULL_NAME
                ),
            }))
        }
    }
}

fn from_value<T: AvroRecord>(value: &Value) -> Result<T, CodecError> {
    apache_avro::from_value::<T>(value).map_err(|e| {
        CodecError::Decode(format!("{} does not fit its Rust type: {e}", T::FULL_NAME))
    })
}

/// Locks survive a panicking holder: the maps they guard are caches, valid at every step.
fn lock<V>(m: &Mutex<V>) -> std::sync::MutexGuard<'_, V> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn read<V>(m: &RwLock<V>) -> std::sync::RwLockReadGuard<'_, V> {
    m.read().unwrap_or_else(|p| p.into_inner())
}

fn write<V>(m: &RwLock<V>) -> std::sync::RwLockWriteGuard<'_, V> {
    m.write().unwrap_or_else(|p| p.into_inner())
}

/// A synchronous encoder of `T` for one topic, with its header precomputed. Cheap to clone;
/// `Send + Sync` whatever `T` is.
pub struct Encoder<T> {
    inner: Arc<EncoderInner>,
    _record: PhantomData<fn(&T)>,
}

struct EncoderInner {
    /// The single-object or Confluent header, identical for every record.
    header: Vec<u8>,
    /// `T`'s schema, prepared for serde_avro_fast, which writes the datum several times faster
    /// than apache-avro's schema-aware serializer (the same bytes: `encoder_writes_what_apache_avro_writes`).
    reader: Arc<Reader>,
    /// Largest record seen so far (capped), so buffers are allocated once at the right size.
    size_hint: AtomicUsize,
}

impl<T> Clone for Encoder<T> {
    fn clone(&self) -> Self {
        Encoder {
            inner: self.inner.clone(),
            _record: PhantomData,
        }
    }
}

impl<T> fmt::Debug for Encoder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Encoder")
            .field("header", &self.inner.header)
            .finish()
    }
}

impl<T: AvroRecord> Encoder<T> {
    /// Header, then the datum serialised straight from `value` against the precomputed schema.
    pub fn encode(&self, value: &T) -> Result<Vec<u8>, CodecError> {
        let hint = self.inner.size_hint.load(Ordering::Relaxed);
        let mut buf = Vec::with_capacity(hint);
        buf.extend_from_slice(&self.inner.header);
        let encode_error =
            |e: &dyn fmt::Display| CodecError::Encode(format!("{}: {e}", T::FULL_NAME));
        buf = match &self.inner.reader.direct {
            Some(schema) => {
                let mut config = serde_avro_fast::ser::SerializerConfig::new(schema);
                serde_avro_fast::to_datum(value, buf, &mut config).map_err(|e| encode_error(&e))?
            }
            None => {
                apache_avro::write_avro_datum_ref(T::schema(), value, &mut buf)
                    .map_err(|e| encode_error(&e))?;
                buf
            }
        };
        if buf.len() > hint && hint < MAX_SIZE_HINT {
            self.inner.size_hint.fetch_max(
                buf.len().next_power_of_two().min(MAX_SIZE_HINT),
                Ordering::Relaxed,
            );
        }
        Ok(buf)
    }

    /// The bytes every payload of this encoder starts with.
    pub fn header(&self) -> &[u8] {
        &self.inner.header
    }
}
