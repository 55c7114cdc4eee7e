//! Forms: as the HTTP API takes and shows them ([`body`]), the checks that build a stored version
//! from a body ([`build`]), the actions processors declare themselves ([`actions`]), and the
//! in-memory view of every form that the gateway and each processor follow ([`view`]).

pub mod actions;
pub mod body;
pub mod build;
pub mod view;

pub use actions::{Action, FormAction, FormActions};
pub use body::{FormBody, FormView};
pub use build::build_version;
pub use view::{FormsObserver, FormsView, follow_forms_topic};
