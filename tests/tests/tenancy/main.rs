//! Issue 18, hostile tenants: one organisation can never touch, stall or read another's data
//! (docs/design.md, promise 8). One module per attack, each against the real broker, each proving
//! that the attack fails and that the victim's data and effects are unchanged:
//! - [`attack5_circuits`]: one organisation's failing target (a webhook receiver down, a
//!   spreadsheet not shared) holds back only its own records.

mod attack5_circuits;
