//! Issue 18, hostile tenants: one organisation can never touch, stall or read another's data
//! (docs/design.md, promise 8). One module per attack, each against the real broker (and, where
//! the attack goes through it, the real gateway), each proving that the attack fails and that the
//! victim's data and effects are unchanged, counted where they land (the Twilio fake, the Sheets
//! fake, the CSV files, the slang index, the gateway's answers):
//! - [`attack1_spreadsheets`]: another organisation's spreadsheet is refused at save (422) and by
//!   the exporter (dead letter), and the victim's spreadsheet holds its own rows only;
//! - [`attack2_responses`]: another organisation reusing a response id changes none of the
//!   victim's effects downstream, nor holds its records back;
//! - [`attack3_forms`]: another organisation's form of the same id is another form (no takeover,
//!   no 409 that reveals the first);
//! - [`attack4_rules`]: rules beyond the budget are refused at save (`rule_too_expensive`), and
//!   rules that run long on an organisation's answers are cut at `--rule-deadline` in validate
//!   while the other organisations' responses flow;
//! - [`attack5_circuits`]: one organisation's failing target (a webhook receiver down, a
//!   spreadsheet not shared) holds back only its own records;
//! - [`attack6_slow_clients`]: slow clients (slowloris, a trickled body, silent connections,
//!   more connections than the limit) hold the gateway for a bounded time and never delay
//!   another organisation's submissions.
//!
//! And the other edges (its "Also" list), one module each:
//! - [`also_webhooks`]: webhooks reach public addresses only (loopback with the development flag);
//! - [`also_audit`]: every write to the gateway is logged with the key's name, never the key;
//! - [`also_dlq_phones`]: phone numbers in a dead letter's error message are redacted at write;
//! - [`also_provider_phones`]: a number Twilio quotes in its error text is redacted in logs and
//!   dead letters;
//! - [`also_keys_reload`]: the API keys file reloads on SIGHUP (revoked keys refused at once);
//! - [`also_record_size`]: a record larger than Kafka accepts is a 413, never an endless 503, and
//!   a form grown past it is a 422 `form_too_large` that leaves it as it was;
//! - [`also_dlq_retention`]: dead-letter topics keep letters `--dlq-retention-ms` (14 days);
//! - [`also_registry_outage`]: a schema registry outage is waited out, never dead-lettered.
//!
//! [`support`] holds what the gateway-driven tests share.

mod support;

mod also_audit;
mod also_dlq_phones;
mod also_dlq_retention;
mod also_keys_reload;
mod also_provider_phones;
mod also_record_size;
mod also_registry_outage;
mod also_webhooks;
mod attack1_spreadsheets;
mod attack2_responses;
mod attack3_forms;
mod attack4_rules;
mod attack5_circuits;
mod attack6_slow_clients;
