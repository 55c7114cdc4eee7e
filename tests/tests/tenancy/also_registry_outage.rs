//! A schema registry outage is waited out, never taken for bad records: while the registry answers
//! 503, the forms view does not skip the form it cannot decode (the processor does not become
//! ready without it) and the runtime neither effects nor dead-letters the response it cannot
//! decode; once the registry serves again, the response takes effect exactly once, and only the
//! record that really is undecodable (an id the working registry answers 404 for) is
//! dead-lettered, as `undecodable`.
//!
//! The registry is a fake the test starts, answering as Confluent's does: `POST
//! /subjects/{subject}/versions` assigns ids, `GET /schemas/ids/{id}` serves the schema, or 404
//! with error code 40403 for an id it does not know, or 503 while the test holds it down (reads
//! only: the test's own encoder registers its schemas before each outage).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::{get, post};
use formstream_core::identity::FormKey;
use formstream_runtime::dlq::headers;
use formstream_schemas::{Codec, Form, RegistryConfig, Response};
use formstream_tests::runtime::*;
use formstream_tests::{read_topic, unique};
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// How long the test waits for each step.
const DEADLINE: Duration = Duration::from_secs(60);

/// The fake registry's state: the schemas registered (id = index + 1), whether reads fail, and
/// how many reads failed since the last outage began.
#[derive(Default)]
struct Registry {
    schemas: Mutex<Vec<String>>,
    down: AtomicBool,
    refused: AtomicUsize,
}

impl Registry {
    /// Starts serving on a free port; returns its state and base URL.
    async fn start() -> (Arc<Registry>, String) {
        let registry = Arc::new(Registry::default());
        let app = Router::new()
            .route("/subjects/{subject}/versions", post(register))
            .route("/schemas/ids/{id}", get(schema_by_id))
            .with_state(registry.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let url = format!("http://{}", listener.local_addr().expect("an address"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        (registry, url)
    }

    /// Reads fail with 503 from now on (`true`) or are served again (`false`).
    fn set_down(&self, down: bool) {
        self.refused.store(0, Ordering::SeqCst);
        self.down.store(down, Ordering::SeqCst);
    }
}

fn registry_json(status: StatusCode, body: Value) -> HttpResponse {
    (
        status,
        [("content-type", "application/vnd.schemaregistry.v1+json")],
        body.to_string(),
    )
        .into_response()
}

async fn register(
    State(registry): State<Arc<Registry>>,
    Path(_subject): Path<String>,
    body: String,
) -> HttpResponse {
    let Some(schema) = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|b| b["schema"].as_str().map(str::to_owned))
    else {
        return registry_json(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"error_code": 42201, "message": "Invalid schema"}),
        );
    };
    let mut schemas = registry.schemas.lock().unwrap();
    let index = match schemas.iter().position(|s| *s == schema) {
        Some(index) => index,
        None => {
            schemas.push(schema);
            schemas.len() - 1
        }
    };
    registry_json(StatusCode::OK, json!({"id": index + 1}))
}

async fn schema_by_id(
    State(registry): State<Arc<Registry>>,
    Path(id): Path<usize>,
) -> HttpResponse {
    if registry.down.load(Ordering::SeqCst) {
        registry.refused.fetch_add(1, Ordering::SeqCst);
        return registry_json(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error_code": 50301, "message": "Service unavailable"}),
        );
    }
    let schemas = registry.schemas.lock().unwrap();
    match id.checked_sub(1).and_then(|index| schemas.get(index)) {
        Some(schema) => registry_json(StatusCode::OK, json!({"schema": schema})),
        None => registry_json(
            StatusCode::NOT_FOUND,
            json!({"error_code": 40403, "message": "Schema not found"}),
        ),
    }
}

/// Publishes `payload`, `form` as encoded, to the forms topic, keyed as the gateway keys it.
async fn publish_form(topics: &RuntimeTopics, form: &Form, payload: &[u8]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &topics.bootstrap)
        .create()
        .expect("a producer");
    producer
        .send(
            FutureRecord::to(&topics.forms)
                .key(&FormKey::of(form).to_string())
                .payload(payload),
            Timeout::After(DEADLINE),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("publishing the form");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_schema_registry_outage_is_waited_out_never_dead_lettered() {
    init_logs();
    let (registry, url) = Registry::start().await;
    let codec = Codec::with_registry(RegistryConfig::new(&url)).expect("a registry codec");
    let topics = RuntimeTopics::create(1).await;
    let producer = TestProducer::new(&topics);
    let form_id = format!("f{}", unique());
    let form = test_form(&form_id);
    let response = test_response(&form_id, &unique(), 0);
    // Register both schemas while the registry is up (as the gateway did before the outage).
    let form_bytes = codec
        .encoder::<Form>(&topics.forms)
        .await
        .expect("a forms encoder")
        .encode(&form)
        .expect("encodes");
    let response_bytes = codec
        .encoder::<Response>(&topics.responses)
        .await
        .expect("a responses encoder")
        .encode(&response)
        .expect("encodes");

    // 1. The forms view: the registry is down when the processor reads the form.
    registry.set_down(true);
    publish_form(&topics, &form, &form_bytes).await;
    let config = topics.config(&["--schema-registry-url", &url]);
    let processor = TestProcessor::new();
    let starting = tokio::spawn(spawn_runtime(processor.clone(), config));
    eventually(DEADLINE, "the forms view retried the registry", || {
        let (registry, starting) = (&registry, &starting);
        async move { registry.refused.load(Ordering::SeqCst) >= 3 || starting.is_finished() }
    })
    .await;
    assert!(
        !starting.is_finished(),
        "the processor became ready without the form it could not decode"
    );
    registry.set_down(false);
    let runtime = starting.await.expect("the runtime starts");

    // 2. The runtime: the registry is down when the response (and a record naming an id the
    // registry does not know) arrive.
    registry.set_down(true);
    let mut unknown_id = vec![0x00, 0x00, 0x00, 0x03, 0xe7];
    unknown_id.extend_from_slice(&response_bytes[5..]);
    let organisation = ("organisation", form.organisation.as_str());
    producer
        .raw(
            0,
            &form_id,
            Some(&response_bytes),
            &[
                ("response_id", &response.response_id),
                ("revision", "0"),
                organisation,
            ],
        )
        .await;
    let unknown_response_id = unique();
    let (_, unknown_offset) = producer
        .raw(
            0,
            &form_id,
            Some(&unknown_id),
            &[
                ("response_id", &unknown_response_id),
                ("revision", "0"),
                organisation,
            ],
        )
        .await;
    let dead_letters = || async {
        read_topic(&topics.bootstrap, &topics.dlq, 0, Duration::from_secs(10))
            .await
            .expect("reading the dead-letter topic")
    };
    eventually(DEADLINE, "the runtime retried the registry", || {
        let registry = &registry;
        async move { registry.refused.load(Ordering::SeqCst) >= 4 || !dead_letters().await.is_empty() }
    })
    .await;
    let during = dead_letters().await;
    assert!(
        during.is_empty(),
        "records were dead-lettered while the registry was down: {during:#?}"
    );
    assert_eq!(processor.state.effect_count(), 0, "nothing decoded yet");

    // 3. The registry is back: the response takes effect once; the unknown id is undecodable.
    registry.set_down(false);
    let letters = read_topic(&topics.bootstrap, &topics.dlq, 1, DEADLINE)
        .await
        .expect("reading the dead-letter topic");
    eventually(DEADLINE, "the response effected", || {
        let state = &processor.state;
        async move { state.effect_count() >= 1 }
    })
    .await;
    wait_committed_to_ends(&topics, DEADLINE).await;
    let effects = processor.state.effects();
    runtime.stop().await.expect("stops");
    let letters_at_end = dead_letters().await;
    topics.delete().await;

    assert_eq!(effects.len(), 1, "exactly once: {effects:#?}");
    assert_eq!(effects[0].response_id, response.response_id);
    assert_eq!(letters.len(), 1, "{letters:#?}");
    assert_eq!(letters_at_end.len(), 1, "{letters_at_end:#?}");
    let letter = &letters[0];
    assert_eq!(
        letter.headers.get(headers::OFFSET),
        Some(&unknown_offset.to_string())
    );
    assert_eq!(
        letter.headers.get(headers::ERROR_KIND).map(String::as_str),
        Some("undecodable")
    );
}
