//! The Confluent mode against a stateful fake Schema Registry: wire layout, caching, auth and
//! failures.
//!
//! Invariant checked: payloads start with 0x00 and the id the registry assigned; an encoder
//! registers once, not per record; an id is fetched once, not per record; registry failures and
//! timeouts surface as `CodecError::Registry` that say what failed, and are retried on the next
//! call rather than cached.

mod helpers;

use std::sync::atomic::Ordering;
use std::time::Duration;

use formstream_schemas::*;
use helpers::*;

#[tokio::test]
async fn payloads_carry_the_assigned_id_and_the_encoder_registers_once() {
    let fake = FakeRegistry::start(None).await;
    // Take id 1 first, so the codec's schema gets a non-trivial id.
    fake.register("forms-value", Form::SCHEMA_JSON).await;
    let codec = Codec::with_registry(fake.config()).unwrap();

    let encoder = codec.encoder::<Response>("responses").await.unwrap();
    let again = codec.encoder::<Response>("responses").await.unwrap();
    let mut payloads = Vec::new();
    for _ in 0..100 {
        payloads.push(encoder.encode(&responses()[1]).unwrap());
        payloads.push(again.clone().encode(&responses()[0]).unwrap());
    }
    assert_eq!(
        fake.registrations.load(Ordering::SeqCst),
        2,
        "one by the test, one by the codec"
    );
    assert_eq!(fake.state.lock().unwrap().subjects["responses-value"], [2]);
    for p in &payloads {
        assert_eq!(p[..5], [0x00, 0, 0, 0, 2]);
    }

    // A fresh consumer fetches id 2 once, however many records it decodes.
    let consumer = Codec::with_registry(fake.config()).unwrap();
    for p in &payloads {
        let _: Response = consumer.decode(p).await.unwrap();
    }
    assert_eq!(fake.fetches.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn basic_auth_is_sent_when_configured_and_refusal_is_clear() {
    let fake = FakeRegistry::start(Some(("svc", "s3cret"))).await;

    let anonymous = Codec::with_registry(fake.config()).unwrap();
    let err = anonymous
        .encoder::<Response>("responses")
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            CodecError::Registry(RegistryError::Status { status: 401, .. })
        ),
        "{err:?}"
    );
    assert!(!err.is_retriable());

    let config = RegistryConfig {
        username: Some("svc".into()),
        password: Some("s3cret".into()),
        ..fake.config()
    };
    let codec = Codec::with_registry(config).unwrap();
    let bytes = encoded::<Response>(&codec, "responses", &responses()[1]).await;
    let back: Response = codec.decode(&bytes).await.unwrap();
    assert_eq!(back, responses()[1]);
}

/// Credentials written into the registry URL (`https://user:pass@host`) authenticate as basic
/// auth, and appear neither in `Debug` output, nor in the codec's description (logged at start),
/// nor in errors.
#[tokio::test]
async fn credentials_in_the_url_authenticate_and_never_print() {
    let fake = FakeRegistry::start(Some(("svc", "p@ss:w0rd"))).await;
    let uri = fake.server.uri();
    let with_credentials = uri.replacen("://", "://svc:p%40ss%3Aw0rd@", 1);
    let config = RegistryConfig::new(with_credentials.clone());
    let shown = format!("{config:?}");
    assert!(!shown.contains("w0rd") && !shown.contains("svc"), "{shown}");
    let codec = Codec::with_registry(config).unwrap();
    assert!(!codec.describe().contains("w0rd"), "{}", codec.describe());
    assert!(!format!("{codec:?}").contains("w0rd"));
    let bytes = encoded::<Response>(&codec, "responses", &responses()[1]).await;
    assert_eq!(
        codec.decode::<Response>(&bytes).await.unwrap(),
        responses()[1]
    );

    fake.state.lock().unwrap().fail_with = Some(503);
    let other = Codec::with_registry(RegistryConfig::new(with_credentials)).unwrap();
    let err = other.encoder::<Form>("forms").await.unwrap_err();
    assert!(!err.to_string().contains("w0rd"), "{err}");
    let err = Codec::with_registry(RegistryConfig::new("htp://svc:s3cret@[::1")).unwrap_err();
    assert!(!err.to_string().contains("s3cret"), "{err}");
}

#[tokio::test]
async fn a_failing_registry_is_a_retriable_registry_error_and_is_not_cached() {
    let fake = FakeRegistry::start(None).await;
    let codec = Codec::with_registry(fake.config()).unwrap();

    fake.state.lock().unwrap().fail_with = Some(503);
    let err = codec.encoder::<Response>("responses").await.unwrap_err();
    let CodecError::Registry(RegistryError::Status {
        status: 503,
        error_code,
        ..
    }) = &err
    else {
        panic!("expected a 503, got {err:?}");
    };
    assert_eq!(*error_code, Some(50300));
    assert!(err.is_retriable());
    assert!(err.to_string().contains("injected failure"), "{err}");

    fake.state.lock().unwrap().fail_with = None;
    let bytes = encoded::<Response>(&codec, "responses", &responses()[0]).await;

    // Same for fetching by id: a failure, then success once the registry recovers.
    let consumer = Codec::with_registry(fake.config()).unwrap();
    fake.state.lock().unwrap().fail_with = Some(500);
    let err = consumer.decode::<Response>(&bytes).await.unwrap_err();
    assert!(
        matches!(err, CodecError::Registry(_)) && err.is_retriable(),
        "{err:?}"
    );
    fake.state.lock().unwrap().fail_with = None;
    assert_eq!(
        consumer.decode::<Response>(&bytes).await.unwrap(),
        responses()[0]
    );
}

#[tokio::test]
async fn a_slow_registry_times_out_within_the_configured_bound() {
    let fake = FakeRegistry::start(None).await;
    fake.state.lock().unwrap().delay = Some(Duration::from_secs(5));
    let config = RegistryConfig {
        timeout: Duration::from_millis(200),
        ..fake.config()
    };
    let codec = Codec::with_registry(config).unwrap();

    let started = std::time::Instant::now();
    let err = codec.encoder::<Response>("responses").await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        matches!(err, CodecError::Registry(RegistryError::Timeout { .. })),
        "{err:?}"
    );
    assert!(err.is_retriable());
    assert!(err.to_string().contains("timed out"), "{err}");
}

#[tokio::test]
async fn an_unreachable_registry_is_a_transport_error() {
    // Bind and drop a listener to get a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let codec =
        Codec::with_registry(RegistryConfig::new(format!("http://127.0.0.1:{port}"))).unwrap();
    let err = codec.encoder::<Response>("responses").await.unwrap_err();
    assert!(
        matches!(err, CodecError::Registry(RegistryError::Transport { .. })),
        "{err:?}"
    );
    assert!(err.is_retriable());
}

#[tokio::test]
async fn an_unknown_registry_id_is_unknown_schema() {
    let fake = FakeRegistry::start(None).await;
    let codec = Codec::with_registry(fake.config()).unwrap();
    let payload = [0x00, 0, 0, 0x30, 0x39, 0x02];
    let err = codec.decode::<Response>(&payload).await.unwrap_err();
    assert!(
        matches!(err, CodecError::UnknownSchema(SchemaId::RegistryId(12345))),
        "{err:?}"
    );
    assert!(err.to_string().contains("12345"), "{err}");
}

#[tokio::test]
async fn a_confluent_payload_without_a_registry_says_so() {
    let err = Codec::single_object()
        .decode::<Response>(&[0, 0, 0, 0, 7, 2])
        .await
        .unwrap_err();
    assert!(matches!(err, CodecError::NoRegistry(7)), "{err:?}");
}

#[test]
fn invalid_registry_urls_are_refused_up_front() {
    for url in ["", "not a url", "ftp://registry"] {
        let err = Codec::with_registry(RegistryConfig::new(url)).unwrap_err();
        assert!(
            matches!(err, CodecError::Registry(RegistryError::InvalidUrl { .. })),
            "{url}: {err:?}"
        );
    }
}

#[tokio::test]
async fn a_registry_url_with_a_trailing_slash_works() {
    let fake = FakeRegistry::start(None).await;
    let config = RegistryConfig {
        url: format!("{}/", fake.server.uri()),
        ..fake.config()
    };
    let codec = Codec::with_registry(config).unwrap();
    codec.encoder::<Form>("forms").await.unwrap();
    assert!(
        fake.state
            .lock()
            .unwrap()
            .subjects
            .contains_key("forms-value")
    );
}
