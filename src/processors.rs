//! The registered processors: one line each. `formstream process <name>` runs one of them and
//! `formstream dev` all of them, in this order (which also gives each its metrics port in dev).
//!
//! Invariant: this list is the only place outside its own folder that names a processor
//! (processors/README.md); its name, flags and construction are its `impl Launch`.

use formstream_runtime::Registration;

pub const PROCESSORS: &[Registration] = &[
    Registration::of::<formstream_journal::Journal>(),
    Registration::of::<formstream_noop::Noop>(),
    Registration::of::<formstream_validate::Validate>(),
    Registration::of::<formstream_notify_collectors::NotifyCollectors>(),
    Registration::of::<formstream_receipts::Receipts>(),
    Registration::of::<formstream_slang::Slang>(),
    Registration::of::<formstream_sheets::Sheets>(),
    Registration::of::<formstream_forward::Forward>(),
];
