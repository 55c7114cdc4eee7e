//! Two small processors that live beside the runtime:
//! - [`Journal`] appends one JSON line per response revision to a local file, durably (one
//!   `fsync` per batch), and can inject faults (retriable, permanent, slowness, an outage). It is
//!   the runtime's test processor and a real "archive responses to a file" processor.
//! - [`Noop`] does nothing (optionally after a sleep): the runtime benchmark's processor.
//!
//! Layout, as for every processor: `config.rs` holds the flags, one module per processor holds the
//! effect, `tests.rs` the unit tests.

pub mod config;
pub mod journal;
pub mod noop;

#[cfg(test)]
mod tests;

pub use config::{JournalArgs, NoopArgs};
pub use journal::Journal;
pub use noop::Noop;
