//! What the formstream gateway and its processors share, so that no processor depends on the
//! gateway (an HTTP server) for it.
//!
//! Modules:
//! - [`config`]: the command-line groups every component flattens (Kafka, topic names and
//!   settings, the schema registry) and the parsers of their values;
//! - [`kafka`]: librdkafka client configuration (`-X` properties from flags and the environment);
//! - [`topics`]: the project's topics and their creation; [`tail`]: records decoded to JSON;
//! - [`follow`]: reading a whole topic into an in-memory view;
//! - [`identity`]: (organisation, form id, response id), and the keys built on it;
//! - [`organisations`]: what each organisation owns outside formstream (its spreadsheets);
//! - [`forms`]: the form model (API shapes, the checks that build a version, the registry of the
//!   actions processors own) and the forms view;
//! - [`rules`]: CEL business rules, checked at save time and evaluated per response;
//! - [`responses`]: validation of a submitted response against its form version;
//! - [`phones`]: phone numbers in E.164; [`redact`]: phone numbers as logs and dead letters show
//!   them; [`time`]: epoch milliseconds and RFC 3339;
//! - [`problem`]: a problem with one field of a request;
//! - [`api`]: what the HTTP servers share (API keys, problem+json errors);
//! - [`codec`]: the Avro codec the registry flags ask for.
//!
//! Invariant: nothing here produces to the spine topics; what it decides (a form is valid, a rule
//! holds) means the same in the gateway and in every processor.

pub mod api;
pub mod config;
pub mod follow;
pub mod forms;
pub mod identity;
pub mod kafka;
pub mod organisations;
pub mod phones;
pub mod problem;
pub mod redact;
pub mod responses;
pub mod rules;
pub mod tail;
pub mod time;
pub mod topics;

use std::time::Duration;

use formstream_schemas::{Codec, RegistryConfig};

use crate::config::RegistryArgs;

/// The codec the configuration asks for: Confluent wire format with a registry, single-object
/// encoding without.
pub fn codec(registry: &RegistryArgs) -> anyhow::Result<Codec> {
    match &registry.schema_registry_url {
        None => Ok(Codec::single_object()),
        Some(url) => Ok(Codec::with_registry(RegistryConfig {
            url: url.clone(),
            username: registry.schema_registry_username.clone(),
            password: registry
                .schema_registry_password
                .clone()
                .map(formstream_schemas::Secret::new),
            timeout: Duration::from_secs(10),
        })?),
    }
}
