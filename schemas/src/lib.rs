//! The Avro contract of formstream's topics: the schemas in `avro/*.avsc`, their Rust twins, and the
//! codec that turns one into bytes for Kafka and back.
//!
//! Modules: [`model`] (the Rust twins of the records), [`codec`] (Avro single-object encoding
//! or the Confluent wire format with a schema registry) and, with the `fixtures` feature,
//! `fixtures` (builders of forms, questions and responses for tests and benchmarks).
//!
//! Invariant: the `.avsc` files are the source of truth. The Rust structs in [`model`] mirror them
//! field for field, and every byte this crate writes names its writer schema (a Rabin fingerprint or
//! a Schema Registry id), so a reader with a newer or older schema can always resolve it.

pub mod codec;
#[cfg(feature = "fixtures")]
pub mod fixtures;
pub mod model;

pub use codec::{
    AvroRecord, Codec, CodecError, Decoder, Encoder, RegistryConfig, RegistryError, SchemaId,
    Secret, without_userinfo,
};
pub use model::*;
