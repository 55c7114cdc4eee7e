//! Forms: the in-memory view of every form ([`view`]).

pub mod view;

pub use view::{FormsObserver, FormsView, follow_forms_topic};
