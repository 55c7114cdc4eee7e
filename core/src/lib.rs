//! What the formstream gateway and its processors share, so that no processor depends on the
//! gateway (an HTTP server) for it.
//!
//! Modules:
//! - [`config`]: the command-line groups every component flattens (Kafka, topic names and
//!   settings, the schema registry) and the parsers of their values;
//! - [`kafka`]: librdkafka client configuration (`-X` properties from flags and the environment);
//! - [`topics`]: the project's topics and their creation;
//! - [`follow`]: reading a whole topic into an in-memory view;
//! - [`forms`]: the forms view and its follower;
//! - [`tail`]: `formstream topics tail`, records decoded to JSON;
//! - [`time`]: milliseconds since the epoch, and RFC 3339;
//! - [`codec`]: the Avro codec the registry flags ask for.
//!
//! Invariant: nothing here serves HTTP or produces to the spine topics; what it decides (a form is
//! valid, a rule holds) means the same in the gateway and in every processor.

pub mod config;
pub mod follow;
pub mod forms;
pub mod kafka;
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
