//! The gateway's HTTP API.
//!
//! Modules: [`router`] (routes, health and metrics endpoints), [`openapi`] (`/openapi.json`, from
//! the handlers' attributes), [`middleware`] (request metrics), [`audit`] (a log line per write),
//! [`extract`] (JSON bodies with problem+json rejections), [`state`] (what handlers share), and
//! one module of handlers per resource: [`forms`], [`responses`], [`batches`], [`flags`],
//! [`dead_letters`].
//!
//! Invariant: a handler answers 2xx for a response only after Kafka acknowledged its record; every
//! other outcome is a problem+json error, and nothing invalid is published.

pub mod audit;
pub mod batches;
pub mod dead_letters;
pub mod extract;
pub mod flags;
pub mod forms;
pub mod middleware;
pub mod openapi;
pub mod responses;
pub mod router;
pub mod state;

pub use extract::{ApiJson, JsonBytes, parse_json};
pub use responses::{Accepted, RetryCacheEntry};
pub use router::router;
pub use state::{AppState, Inner};
