//! The forms view: every form, held in memory as read from the compacted forms topic, and the
//! follower that keeps it up to date. The gateway serves forms from it; every processor is handed
//! form versions from its own.
//!
//! Invariant: the view only ever moves a form forward (a record with fewer versions than the one
//! held is ignored), and it reports ready only after it has read every partition of the forms topic
//! up to the end it had when it started.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use formstream_schemas::{Codec, Form};
use rdkafka::Message;
use rdkafka::error::KafkaError;
use tokio::sync::watch;

use crate::config::KafkaArgs;
use crate::follow::{Followed, TopicFollower};

/// What a forms-view follower reports as it goes, for whoever counts it: the gateway's metrics,
/// or nothing (`()`).
pub trait FormsObserver: Send + Sync + 'static {
    /// A record of `topic` could not be decoded and was skipped (it is logged as well).
    fn decode_error(&self, topic: &str);
    /// After each record: whether the view has caught up, and how many forms it holds.
    fn view_changed(&self, ready: bool, forms: usize);
}

/// Reports nothing: for a view whose figures no one serves.
impl FormsObserver for () {
    fn decode_error(&self, _topic: &str) {}
    fn view_changed(&self, _ready: bool, _forms: usize) {}
}

/// Every form, as read from the forms topic (plus, in the gateway, its own acknowledged writes).
#[derive(Default)]
pub struct FormsView {
    forms: RwLock<HashMap<String, Arc<Form>>>,
    ready: AtomicBool,
}

impl FormsView {
    pub fn get(&self, id: &str) -> Option<Arc<Form>> {
        self.forms.read().ok()?.get(id).cloned()
    }

    /// The forms of one organisation, ordered by id.
    pub fn list(&self, organisation: &str) -> Vec<Arc<Form>> {
        let Ok(forms) = self.forms.read() else {
            return Vec::new();
        };
        let mut list: Vec<_> = forms
            .values()
            .filter(|f| f.organisation == organisation)
            .cloned()
            .collect();
        list.sort_by(|a, b| a.id.cmp(&b.id));
        list
    }

    pub fn len(&self) -> usize {
        self.forms.read().map(|f| f.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Applies a form read from the topic or just acknowledged by it. Older states are ignored.
    pub fn apply(&self, form: Form) {
        let Ok(mut forms) = self.forms.write() else {
            return;
        };
        let newer = forms
            .get(&form.id)
            .is_none_or(|held| held.versions.len() <= form.versions.len());
        if newer {
            forms.insert(form.id.clone(), Arc::new(form));
        }
    }

    /// A tombstone removes the form.
    pub fn remove(&self, id: &str) {
        if let Ok(mut forms) = self.forms.write() {
            forms.remove(id);
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }
}

/// Reads the whole forms topic into `view`, marks it ready once caught up, then follows new records
/// until `shutdown` changes.
pub async fn follow_forms_topic(
    kafka: KafkaArgs,
    topic: String,
    codec: Codec,
    view: Arc<FormsView>,
    observer: impl FormsObserver,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), KafkaError> {
    let Some(mut follower) =
        TopicFollower::start(&kafka, &topic, "forms", &[], &mut shutdown).await?
    else {
        return Ok(());
    };
    while let Some(followed) = follower.next(&mut shutdown).await {
        match followed {
            Followed::Record(message) => match message.payload() {
                None => {
                    if let Some(Ok(id)) = message.key_view::<str>() {
                        view.remove(id);
                    }
                }
                Some(payload) => match codec.decode::<Form>(payload).await {
                    Ok(form) => view.apply(form),
                    Err(error) => {
                        observer.decode_error(&topic);
                        tracing::error!(
                            %topic,
                            partition = message.partition(),
                            offset = message.offset(),
                            %error,
                            "Skipped a forms record that could not be decoded."
                        );
                    }
                },
            },
            Followed::CaughtUp => {
                view.set_ready();
                tracing::info!(%topic, forms = view.len(), "Forms view caught up; ready.");
            }
        }
        observer.view_changed(view.is_ready(), view.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use formstream_schemas::FormVersion;

    use super::*;

    #[test]
    fn the_view_never_goes_back() {
        let view = FormsView::default();
        let v = |n| FormVersion {
            version: n,
            title: "t".into(),
            description: String::new(),
            default_region: None,
            questions: vec![],
            metadata_json: "{}".into(),
            rules: vec![],
            notify: Default::default(),
            receipt: None,
            slang: None,
            sheets: None,
            created_at: 0,
        };
        let form = |versions| Form {
            id: "f".into(),
            organisation: "o".into(),
            created_at: 0,
            versions,
        };
        view.apply(form(vec![v(1), v(2)]));
        view.apply(form(vec![v(1)]));
        assert_eq!(view.get("f").expect("held").versions.len(), 2);
        assert!(view.list("other").is_empty());
    }
}
