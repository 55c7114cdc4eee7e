//! What the two HTTP servers (the gateway and the slang search API) share: API keys and the
//! caller they name ([`keys`]), and problem+json errors ([`error`]).

pub mod error;
pub mod keys;

pub use error::{ApiError, PROBLEM_JSON, Problem};
pub use keys::{ApiKeys, Caller, HasApiKeys};
