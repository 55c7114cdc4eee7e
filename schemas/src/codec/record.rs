//! The [`AvroRecord`] trait: ties each topic value type to its compiled-in `.avsc` schema.
//!
//! Invariant: each schema is parsed from the `.avsc` text embedded at build time, exactly once per
//! process (a `LazyLock`), and the files are tested to parse, so `schema()` never fails at run time.

use std::sync::LazyLock;

use apache_avro::Schema;

use crate::model::{Form, Response, ResponseFlag};

/// A value type with a compiled-in Avro schema: the unit the [`Codec`](super::Codec) encodes and
/// decodes. Implemented for [`Form`], [`Response`] and [`ResponseFlag`]; tests implement it for
/// other versions of those records to exercise schema evolution.
pub trait AvroRecord:
    serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static
{
    /// Full name, e.g. "io.formstream.v1.Response".
    const FULL_NAME: &'static str;
    /// The `.avsc` text as written (docs and defaults included). This, not the canonical form, is
    /// what gets registered with a Schema Registry, because its compatibility checks need the
    /// defaults that the canonical form drops.
    const SCHEMA_JSON: &'static str;
    /// The compiled-in schema, parsed once.
    fn schema() -> &'static Schema;
}

/// Parses an embedded `.avsc`. The embedded files are covered by tests, so a failure here is a
/// build defect, not bad input.
fn parse_embedded(name: &str, json: &str) -> Schema {
    Schema::parse_str(json).unwrap_or_else(|e| panic!("embedded schema {name} does not parse: {e}"))
}

macro_rules! avro_record {
    ($ty:ty, $full_name:literal, $file:literal) => {
        impl AvroRecord for $ty {
            const FULL_NAME: &'static str = $full_name;
            const SCHEMA_JSON: &'static str = include_str!(concat!("../../avro/", $file));
            fn schema() -> &'static Schema {
                static SCHEMA: LazyLock<Schema> =
                    LazyLock::new(|| parse_embedded($file, <$ty as AvroRecord>::SCHEMA_JSON));
                &SCHEMA
            }
        }
    };
}

avro_record!(Form, "io.formstream.v1.Form", "form.avsc");
avro_record!(Response, "io.formstream.v1.Response", "response.avsc");
avro_record!(ResponseFlag, "io.formstream.v1.ResponseFlag", "flag.avsc");

/// The compiled-in schemas, for seeding a codec's table of known writer schemas.
pub(crate) fn compiled_in() -> [(&'static str, &'static Schema); 3] {
    [
        (Form::FULL_NAME, Form::schema()),
        (Response::FULL_NAME, Response::schema()),
        (ResponseFlag::FULL_NAME, ResponseFlag::schema()),
    ]
}
