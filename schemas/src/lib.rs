//! The Avro contract of formstream's topics: the schemas in `avro/*.avsc`, their Rust twins, and the
//! codec that turns one into bytes for Kafka and back.
//!
//! Invariant: the `.avsc` files are the source of truth. The Rust structs in [`model`] mirror them
//! field for field, and every byte this crate writes names its writer schema (a Rabin fingerprint or
//! a Schema Registry id), so a reader with a newer or older schema can always resolve it.

pub mod codec;
pub mod model;

pub use codec::{
    AvroRecord, Codec, CodecError, Decoder, Encoder, RegistryConfig, RegistryError, SchemaId,
    Secret,
};
pub use model::*;
