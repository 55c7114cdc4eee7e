//! The forms view: every form, held in memory as read from the compacted forms topic, and the
//! follower that keeps it up to date. The gateway serves forms from it; every processor is handed
//! form versions from its own.
//!
//! Invariant: a form is (organisation, form id) (docs/design.md, promise 8): two organisations
//! may each hold a form of one id, and nothing of one ever replaces, removes or reveals the
//! other's. The view only ever moves a form forward (a record with fewer versions than the one
//! held is ignored), and it reports ready only after it has read every partition of the forms
//! topic up to the end it had when it started. A forms record is skipped only when it cannot be
//! decoded, never while the schema registry cannot answer (that is waited out).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use formstream_schemas::{Codec, CodecError, Form};
use rdkafka::Message;
use rdkafka::error::KafkaError;
use tokio::sync::watch;

use crate::config::KafkaArgs;
use crate::follow::{Followed, TopicFollower};
use crate::identity::FormKey;

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
    /// Organisation -> form id -> form: nested, so that a look-up borrows the record's strings
    /// instead of building a key.
    forms: RwLock<HashMap<String, HashMap<String, Arc<Form>>>>,
    /// How many forms, over every organisation.
    count: AtomicUsize,
    ready: AtomicBool,
}

impl FormsView {
    /// `organisation`'s form `id`; another organisation's form of that id is not there.
    pub fn get(&self, organisation: &str, id: &str) -> Option<Arc<Form>> {
        self.forms.read().ok()?.get(organisation)?.get(id).cloned()
    }

    /// The forms of one organisation, ordered by id.
    pub fn list(&self, organisation: &str) -> Vec<Arc<Form>> {
        let Ok(forms) = self.forms.read() else {
            return Vec::new();
        };
        let mut list: Vec<_> = forms
            .get(organisation)
            .map(|own| own.values().cloned().collect())
            .unwrap_or_default();
        list.sort_by(|a, b| a.id.cmp(&b.id));
        list
    }

    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Applies a form read from the topic or just acknowledged by it, as its organisation's form
    /// of its id. Older states are ignored.
    pub fn apply(&self, form: Form) {
        let Ok(mut forms) = self.forms.write() else {
            return;
        };
        let own = forms.entry(form.organisation.clone()).or_default();
        let newer = own
            .get(&form.id)
            .is_none_or(|held| held.versions.len() <= form.versions.len());
        if newer && own.insert(form.id.clone(), Arc::new(form)).is_none() {
            self.count.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A tombstone removes `organisation`'s form `id`.
    pub fn remove(&self, organisation: &str, id: &str) {
        let Ok(mut forms) = self.forms.write() else {
            return;
        };
        let Some(own) = forms.get_mut(organisation) else {
            return;
        };
        if own.remove(id).is_some() {
            self.count.fetch_sub(1, Ordering::Relaxed);
        }
        if own.is_empty() {
            forms.remove(organisation);
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
                None => match message.key_view::<str>() {
                    Some(Ok(key)) => match FormKey::parse(key) {
                        Some((organisation, id)) => view.remove(organisation, id),
                        // Keyed by a form id alone, as the topic was before keys named the
                        // organisation: which organisation's form it meant cannot be told.
                        None => tracing::warn!(
                            %topic,
                            key,
                            "Ignored a forms tombstone keyed by a form id alone; key it \
                             <organisation>/<form id> to remove that organisation's form."
                        ),
                    },
                    _ => tracing::warn!(%topic, "Ignored a forms tombstone without a text key."),
                },
                Some(payload) => match decode_patiently(&codec, payload, &mut shutdown).await {
                    None => return Ok(()),
                    Some(Ok(form)) => view.apply(form),
                    Some(Err(error)) => {
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

/// Decodes a forms record, waiting out a schema registry that cannot answer now (a timeout, a
/// refused connection, 408, 429, 5xx) with capped exponential backoff: skipping the record would
/// lose the form until it is saved again. Later records wait behind it, so the view still only
/// moves forward. `Some(Err)` is a record that cannot be decoded (skipped); `None`, `shutdown`
/// changed while the registry was out.
async fn decode_patiently(
    codec: &Codec,
    payload: &[u8],
    shutdown: &mut watch::Receiver<bool>,
) -> Option<Result<Form, CodecError>> {
    let mut delay = REGISTRY_RETRY_FIRST;
    loop {
        match codec.decode::<Form>(payload).await {
            Err(error) if error.is_retriable() => {
                tracing::warn!(
                    %error,
                    ?delay,
                    "The schema registry cannot answer; decoding the forms record again after a pause."
                );
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => return None,
                }
                delay = (delay * 2).min(REGISTRY_RETRY_MAX);
            }
            decoded => return Some(decoded),
        }
    }
}

/// The first pause after a schema registry failed to answer: short, since most outages of a
/// registry behind a load balancer are a restart.
const REGISTRY_RETRY_FIRST: Duration = Duration::from_millis(200);
/// The longest pause between two tries of a registry that keeps failing: a registry back up is
/// noticed within this.
const REGISTRY_RETRY_MAX: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use formstream_schemas::FormVersion;

    use super::*;

    fn v(n: i32) -> FormVersion {
        FormVersion {
            version: n,
            title: "t".into(),
            description: String::new(),
            default_region: None,
            questions: vec![],
            metadata_json: "{}".into(),
            actions_json: "{}".into(),
            rules: vec![],
            notify: Default::default(),
            receipt: None,
            slang: None,
            sheets: None,
            created_at: 0,
        }
    }

    fn form(organisation: &str, versions: Vec<FormVersion>) -> Form {
        Form {
            id: "f".into(),
            organisation: organisation.into(),
            created_at: 0,
            versions,
        }
    }

    #[test]
    fn the_view_never_goes_back() {
        let view = FormsView::default();
        view.apply(form("o", vec![v(1), v(2)]));
        view.apply(form("o", vec![v(1)]));
        assert_eq!(view.get("o", "f").expect("held").versions.len(), 2);
        assert!(view.list("other").is_empty());
    }

    #[test]
    fn two_organisations_each_hold_a_form_of_one_id() {
        let view = FormsView::default();
        view.apply(form("acme", vec![v(1), v(2)]));
        // globex's form of the same id, with fewer versions: neither replaces nor is ignored.
        view.apply(form("globex", vec![v(1)]));
        assert_eq!(view.len(), 2);
        assert_eq!(view.get("acme", "f").expect("acme's").versions.len(), 2);
        assert_eq!(view.get("globex", "f").expect("globex's").versions.len(), 1);
        assert!(view.get("initech", "f").is_none());
        assert_eq!(view.list("globex").len(), 1);
        view.remove("globex", "f");
        assert!(view.get("globex", "f").is_none());
        assert_eq!(view.get("acme", "f").expect("acme's").organisation, "acme");
        assert_eq!(view.len(), 1);
    }
}
