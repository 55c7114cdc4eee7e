//! What the two HTTP servers (the gateway and the slang search API) share: API keys and the
//! caller they name ([`keys`]), problem+json errors ([`error`]), and serving with limits on slow
//! clients ([`serve`]).

pub mod error;
pub mod keys;
pub mod serve;

pub use error::{ApiError, PROBLEM_JSON, Problem};
pub use keys::{ApiKeys, Caller, CallerSlot, HasApiKeys};
pub use serve::{HttpLimits, serve};
