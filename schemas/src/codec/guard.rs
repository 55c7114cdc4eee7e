//! A structural pre-check of an Avro datum against its writer schema, run before decoding.
//!
//! Why: apache-avro trusts the lengths it reads. A corrupt or hostile payload that claims an
//! array of 500 million items makes it reserve that many `Value`s up front, which can abort the
//! process, and a truncated string silently decodes as `null`. This walk allocates nothing and
//! checks what the decoder takes on faith.
//!
//! Invariant: if [`check`] returns `Ok`, the bytes are exactly one datum of the schema (no trailing
//! bytes), no length or block count exceeds the bytes that remain, every union branch and enum
//! symbol index exists, and nesting is at most [`MAX_DEPTH`] deep; so decoding them allocates at
//! most in proportion to the payload.

use std::collections::HashMap;

use apache_avro::Schema;
use apache_avro::schema::{Name, RecordSchema};

/// Deepest nesting accepted; only recursive schemas can reach it, and it keeps both this walk
/// and apache-avro's recursive decoder far from the end of the stack.
pub(crate) const MAX_DEPTH: usize = 64;

/// Named types of a schema, for resolving `Schema::Ref`.
pub(crate) type Names = HashMap<Name, Schema>;

/// Collects the named types (records, enums, fixed) a schema defines.
pub(crate) fn collect_names(schema: &Schema, names: &mut Names) {
    match schema {
        Schema::Record(RecordSchema { name, fields, .. }) => {
            names.insert(name.clone(), schema.clone());
            for field in fields {
                collect_names(&field.schema, names);
            }
        }
        Schema::Enum(e) => {
            names.insert(e.name.clone(), schema.clone());
        }
        Schema::Fixed(f) => {
            names.insert(f.name.clone(), schema.clone());
        }
        Schema::Decimal(d) => collect_names(&d.inner, names),
        Schema::Array(a) => collect_names(&a.items, names),
        Schema::Map(m) => collect_names(&m.types, names),
        Schema::Union(u) => {
            for variant in u.variants() {
                collect_names(variant, names);
            }
        }
        _ => {}
    }
}

/// Checks that `bytes` hold exactly one datum of `schema`. The error says what is wrong and where.
pub(crate) fn check(schema: &Schema, names: &Names, bytes: &[u8]) -> Result<(), String> {
    let mut cursor = Cursor { bytes, pos: 0 };
    walk(schema, names, &mut cursor, 0)?;
    if cursor.pos != bytes.len() {
        return Err(format!(
            "{} unexpected trailing bytes after the datum (at offset {})",
            bytes.len() - cursor.pos,
            cursor.pos
        ));
    }
    Ok(())
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn skip(&mut self, n: usize, what: &str) -> Result<(), String> {
        if n > self.remaining() {
            return Err(format!(
                "truncated: {what} needs {n} bytes at offset {} but only {} remain",
                self.pos,
                self.remaining()
            ));
        }
        self.pos += n;
        Ok(())
    }

    /// A zig-zag varint long, as Avro writes `int`, `long` and lengths.
    fn long(&mut self, what: &str) -> Result<i64, String> {
        let start = self.pos;
        let mut value: u64 = 0;
        for shift in (0..64).step_by(7) {
            let Some(&byte) = self.bytes.get(self.pos) else {
                return Err(format!("truncated: {what} at offset {start} ends early"));
            };
            self.pos += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(((value >> 1) as i64) ^ -((value & 1) as i64));
            }
        }
        Err(format!(
            "{what} at offset {start} is a varint longer than 10 bytes"
        ))
    }

    fn int(&mut self, what: &str) -> Result<i32, String> {
        let start = self.pos;
        let value = self.long(what)?;
        i32::try_from(value).map_err(|_| format!("{what} at offset {start} overflows an int"))
    }

    /// A length prefix: non-negative and no longer than what is left.
    fn len(&mut self, what: &str) -> Result<usize, String> {
        let start = self.pos;
        let len = self.long(what)?;
        let len = usize::try_from(len)
            .map_err(|_| format!("{what} at offset {start} has negative length {len}"))?;
        if len > self.remaining() {
            return Err(format!(
                "truncated: {what} at offset {start} claims {len} bytes but only {} remain",
                self.remaining()
            ));
        }
        Ok(len)
    }
}

fn walk(schema: &Schema, names: &Names, c: &mut Cursor<'_>, depth: usize) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!("datum nests deeper than {MAX_DEPTH} levels"));
    }
    match schema {
        Schema::Null => Ok(()),
        Schema::Boolean => {
            let at = c.pos;
            match c.bytes.get(at) {
                Some(0 | 1) => c.skip(1, "boolean"),
                Some(b) => Err(format!("boolean at offset {at} is {b}, not 0 or 1")),
                None => Err(format!("truncated: boolean at offset {at} is missing")),
            }
        }
        Schema::Int | Schema::Date | Schema::TimeMillis => c.int("int").map(drop),
        Schema::Long
        | Schema::TimeMicros
        | Schema::TimestampMillis
        | Schema::TimestampMicros
        | Schema::TimestampNanos
        | Schema::LocalTimestampMillis
        | Schema::LocalTimestampMicros
        | Schema::LocalTimestampNanos => c.long("long").map(drop),
        Schema::Float => c.skip(4, "float"),
        Schema::Double => c.skip(8, "double"),
        Schema::Bytes | Schema::BigDecimal | Schema::Uuid => {
            let n = c.len("bytes")?;
            c.skip(n, "bytes")
        }
        Schema::String => {
            let n = c.len("string")?;
            let at = c.pos;
            std::str::from_utf8(&c.bytes[at..at + n])
                .map_err(|e| format!("string at offset {at} is not UTF-8: {e}"))?;
            c.skip(n, "string")
        }
        Schema::Fixed(f) => c.skip(f.size, "fixed"),
        Schema::Duration => c.skip(12, "duration"),
        Schema::Decimal(d) => walk(&d.inner, names, c, depth + 1),
        Schema::Enum(e) => {
            let at = c.pos;
            let index = c.int("enum index")?;
            if usize::try_from(index).is_ok_and(|i| i < e.symbols.len()) {
                Ok(())
            } else {
                Err(format!(
                    "enum {} at offset {at} has index {index}, but only {} symbols",
                    e.name.name,
                    e.symbols.len()
                ))
            }
        }
        Schema::Union(u) => {
            let at = c.pos;
            let index = c.long("union branch")?;
            let variant = usize::try_from(index)
                .ok()
                .and_then(|i| u.variants().get(i))
                .ok_or_else(|| {
                    format!(
                        "union at offset {at} selects branch {index}, but it has {}",
                        u.variants().len()
                    )
                })?;
            walk(variant, names, c, depth + 1)
        }
        Schema::Array(a) => blocks(c, "array", |c| walk(&a.items, names, c, depth + 1)),
        Schema::Map(m) => blocks(c, "map", |c| {
            walk(&Schema::String, names, c, depth + 1)?;
            walk(&m.types, names, c, depth + 1)
        }),
        Schema::Record(r) => {
            for field in &r.fields {
                walk(&field.schema, names, c, depth + 1)?;
            }
            Ok(())
        }
        Schema::Ref { name } => match names.get(name) {
            Some(named) => walk(named, names, c, depth + 1),
            None => Err(format!("writer schema refers to undefined type {name}")),
        },
    }
}

/// Array and map blocks: a count, negative when followed by a byte size, until a zero count. A
/// block may not claim more items than bytes remain; that rejects arrays of zero-byte items
/// (such as `null`) longer than the rest of the payload, which no formstream schema has.
fn blocks(
    c: &mut Cursor<'_>,
    what: &str,
    mut item: impl FnMut(&mut Cursor<'_>) -> Result<(), String>,
) -> Result<(), String> {
    loop {
        let at = c.pos;
        let count = c.long(what)?;
        if count == 0 {
            return Ok(());
        }
        if count < 0 {
            c.long("block size")?;
        }
        let count = count.unsigned_abs();
        if count > c.remaining() as u64 {
            return Err(format!(
                "{what} block at offset {at} claims {count} items but only {} bytes remain",
                c.remaining()
            ));
        }
        for _ in 0..count {
            item(c)?;
        }
    }
}
