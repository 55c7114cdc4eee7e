//! Schema evolution: `Response` v2 (fixture `response-v2.avsc`) adds `channel` with default "app";
//! the current `Form` added `rules` and `notify` to the `Form` of fixture `form-v1.avsc`, and
//! `receipt`, `slang` and `sheets` to that of `form-v2.avsc`.
//!
//! Invariant checked: BACKWARD (a newer reader reads older data and sees the defaults) and FORWARD
//! (an older reader reads newer data and ignores the new fields), in both wire formats.

mod helpers;

use formstream_schemas::*;
use helpers::*;

fn v1() -> Response {
    responses()[1].clone()
}

#[tokio::test]
async fn single_object_backward_new_reader_reads_old_data_with_the_default() {
    let producer = Codec::single_object();
    let old = encoded::<Response>(&producer, "responses", &v1()).await;

    let consumer = Codec::single_object();
    let read: ResponseV2 = consumer.decode(&old).await.unwrap();
    assert_eq!(read, ResponseV2::from_v1(v1(), "app"));
}

#[tokio::test]
async fn single_object_forward_old_reader_reads_new_data_ignoring_the_field() {
    let producer = Codec::single_object();
    let new =
        encoded::<ResponseV2>(&producer, "responses", &ResponseV2::from_v1(v1(), "web")).await;

    // A consumer that only has the compiled-in schemas cannot know v2's fingerprint...
    let err = Codec::single_object()
        .decode::<Response>(&new)
        .await
        .unwrap_err();
    assert!(
        matches!(err, CodecError::UnknownSchema(SchemaId::Fingerprint(_))),
        "{err}"
    );

    // ...and one told about v2 reads it as v1.
    let consumer = Codec::single_object_with_writers(vec![RESPONSE_V2.clone()]);
    let read: Response = consumer.decode(&new).await.unwrap();
    assert_eq!(read, v1());
}

#[tokio::test]
async fn confluent_backward_new_reader_reads_old_data_with_the_default() {
    let fake = FakeRegistry::start(None).await;
    let producer = Codec::with_registry(fake.config()).unwrap();
    let old = encoded::<Response>(&producer, "responses", &v1()).await;

    let consumer = Codec::with_registry(fake.config()).unwrap();
    let read: ResponseV2 = consumer.decode(&old).await.unwrap();
    assert_eq!(read, ResponseV2::from_v1(v1(), "app"));
}

#[tokio::test]
async fn confluent_forward_old_reader_reads_new_data_ignoring_the_field() {
    let fake = FakeRegistry::start(None).await;
    // v1 is registered first, as in production; v2 is then accepted as a BACKWARD-compatible version.
    let v1_id = fake
        .register("responses-value", Response::SCHEMA_JSON)
        .await;
    let producer = Codec::with_registry(fake.config()).unwrap();
    let new =
        encoded::<ResponseV2>(&producer, "responses", &ResponseV2::from_v1(v1(), "sms")).await;
    let v2_id = u32::from_be_bytes(new[1..5].try_into().unwrap());
    assert_ne!(v1_id, v2_id);
    assert_eq!(
        fake.state.lock().unwrap().subjects["responses-value"],
        [v1_id, v2_id]
    );

    let consumer = Codec::with_registry(fake.config()).unwrap();
    let read: Response = consumer.decode(&new).await.unwrap();
    assert_eq!(read, v1());
}

#[tokio::test]
async fn an_incompatible_schema_is_refused_with_a_clear_permanent_registry_error() {
    let fake = FakeRegistry::start(None).await;
    // Someone registered a Response whose `revision` is a string: v1 cannot read that data, so
    // registering v1 as the next version breaks BACKWARD compatibility.
    let mut other: serde_json::Value = serde_json::from_str(Response::SCHEMA_JSON).unwrap();
    for field in other["fields"].as_array_mut().unwrap() {
        if field["name"] == "revision" {
            field["type"] = "string".into();
        }
    }
    fake.register("responses-value", &other.to_string()).await;

    let codec = Codec::with_registry(fake.config()).unwrap();
    let err = codec.encoder::<Response>("responses").await.unwrap_err();
    let CodecError::Registry(RegistryError::Status { status: 409, .. }) = &err else {
        panic!("expected a 409 from the registry, got {err:?}");
    };
    assert!(!err.is_retriable());
    assert!(err.to_string().contains("incompatible"), "{err}");
    assert!(
        err.to_string()
            .contains("/subjects/responses-value/versions"),
        "{err}"
    );
}

/// Forms written before rules existed are still on the compacted forms topic; a gateway or
/// processor with the current schema must read them as forms without rules or notifications.
#[tokio::test]
async fn forms_written_before_rules_read_with_no_rules_and_no_notifications() {
    let current = forms()[1].clone();
    let old = FormV1::from_current(current.clone());
    let bytes = encoded::<FormV1>(&Codec::single_object(), "forms", &old).await;

    let consumer = Codec::single_object_with_writers(vec![FORM_V1.clone()]);
    let read: Form = consumer.decode(&bytes).await.unwrap();
    let mut expected = current;
    for version in &mut expected.versions {
        version.rules.clear();
        version.notify = Notify::default();
        version.receipt = None;
        version.slang = None;
        version.sheets = None;
    }
    assert_eq!(read, expected);
    assert!(read.versions.iter().all(|v| v.rules.is_empty()));
}

#[tokio::test]
async fn a_reader_from_before_rules_reads_forms_with_rules_ignoring_them() {
    let current = forms()[1].clone();
    assert!(
        !current.versions[1].rules.is_empty(),
        "the fixture has rules"
    );
    let fake = FakeRegistry::start(None).await;
    fake.register("forms-value", FormV1::SCHEMA_JSON).await;
    let bytes = Codec::with_registry(fake.config())
        .unwrap()
        .encoder::<Form>("forms")
        .await
        .unwrap()
        .encode(&current)
        .unwrap();

    let read: FormV1 = Codec::with_registry(fake.config())
        .unwrap()
        .decode(&bytes)
        .await
        .unwrap();
    assert_eq!(read, FormV1::from_current(current));
}

/// Forms saved before receipt actions existed stay on the compacted forms topic: the current
/// reader sees them without a receipt (the receipts processor then sends nothing for them), in
/// both wire formats.
#[tokio::test]
async fn forms_written_before_receipts_read_with_no_receipt() {
    let current = forms()[1].clone();
    assert!(current.versions[1].receipt.is_some(), "the fixture has one");
    let old = FormV2::from_current(current.clone());
    let mut expected = current;
    for version in &mut expected.versions {
        version.receipt = None;
        version.slang = None;
        version.sheets = None;
    }

    let bytes = encoded::<FormV2>(&Codec::single_object(), "forms", &old).await;
    let consumer = Codec::single_object_with_writers(vec![FORM_V2.clone()]);
    let read: Form = consumer.decode(&bytes).await.unwrap();
    assert_eq!(read, expected);

    let fake = FakeRegistry::start(None).await;
    let bytes = Codec::with_registry(fake.config())
        .unwrap()
        .encoder::<FormV2>("forms")
        .await
        .unwrap()
        .encode(&old)
        .unwrap();
    let read: Form = Codec::with_registry(fake.config())
        .unwrap()
        .decode(&bytes)
        .await
        .unwrap();
    assert_eq!(read, expected);
}

#[tokio::test]
async fn a_reader_from_before_receipts_reads_forms_with_receipts_ignoring_them() {
    let current = forms()[1].clone();
    let fake = FakeRegistry::start(None).await;
    fake.register("forms-value", FormV2::SCHEMA_JSON).await;
    let bytes = Codec::with_registry(fake.config())
        .unwrap()
        .encoder::<Form>("forms")
        .await
        .unwrap()
        .encode(&current)
        .unwrap();
    let read: FormV2 = Codec::with_registry(fake.config())
        .unwrap()
        .decode(&bytes)
        .await
        .unwrap();
    assert_eq!(read, FormV2::from_current(current));
}

/// A `Decoder` takes its direct path only for the reader's own schema: a payload of another
/// version still goes through the codec's schema resolution, and a damaged one is still refused.
#[tokio::test]
async fn a_decoder_reads_what_the_codec_reads() {
    let codec = Codec::single_object();
    let own = encoded::<Response>(&codec, "responses", &v1()).await;
    let decoder = codec.decoder::<Response>();
    assert_eq!(decoder.decode(&own).await.unwrap(), v1());

    // Written as v1, read as v2: not the reader's own schema, so resolved, with the default.
    let v2 = codec.decoder::<ResponseV2>();
    assert_eq!(
        v2.decode(&own).await.unwrap(),
        ResponseV2::from_v1(v1(), "app")
    );

    // The reader's own header on a truncated datum: an error, as from the codec.
    let truncated = &own[..own.len() - 3];
    let direct = decoder.decode(truncated).await.unwrap_err();
    let resolved = codec.decode::<Response>(truncated).await.unwrap_err();
    assert!(matches!(direct, CodecError::Decode(_)), "{direct}");
    assert_eq!(direct.to_string(), resolved.to_string());
    // A header naming no known schema.
    let mut unknown = own.clone();
    unknown[2] ^= 0xff;
    assert!(matches!(
        decoder.decode(&unknown).await.unwrap_err(),
        CodecError::UnknownSchema(SchemaId::Fingerprint(_))
    ));
}
