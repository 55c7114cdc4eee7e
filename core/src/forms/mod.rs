//! Forms: as the HTTP API takes and shows them ([`body`]), the checks of a form's own parts
//! ([`build`]), the actions processors own, and the building of a stored version from a body with
//! them ([`actions`]: [`FormActions::build_version`]), and the
//! in-memory view of every form that the gateway and each processor follow ([`view`]).

pub mod actions;
pub mod body;
pub mod build;
pub mod view;

pub use actions::{Action, FormAction, FormActions};
pub use body::{FormBody, FormView};
pub use view::{FormsObserver, FormsView, follow_forms_topic};
