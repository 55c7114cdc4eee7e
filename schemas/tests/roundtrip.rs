//! Round trips of every record type through both wire formats, and the wire layout of each.
//!
//! Invariant checked: decode(encode(x)) == x for every shape the schemas allow (enums, optional
//! unions set and unset, empty and non-empty arrays), and the headers are exactly what the
//! single-object and Confluent specifications say.

mod helpers;

use std::fmt::Debug;

use formstream_schemas::*;
use helpers::*;

async fn round_trip<T: AvroRecord + PartialEq + Debug>(codec: &Codec, topic: &str, values: &[T]) {
    let encoder = codec.encoder::<T>(topic).await.expect("encoder");
    for value in values {
        let bytes = encoder.encode(value).expect("encodes");
        let back: T = codec.decode(&bytes).await.expect("decodes");
        assert_eq!(&back, value);
    }
}

#[tokio::test]
async fn single_object_round_trips_every_record_type() {
    let codec = Codec::single_object();
    assert_eq!(codec.describe(), "single-object");
    round_trip(&codec, "forms", &forms()).await;
    round_trip(&codec, "responses", &responses()).await;
    round_trip(&codec, "response-flags", &flags()).await;
}

/// The encoder's datum is byte for byte what apache-avro, the reference implementation, writes
/// for the same value: round trips alone could not see a fault shared by encoder and decoder.
async fn writes_the_reference_datum<T: AvroRecord + Debug>(codec: &Codec, values: &[T]) {
    let encoder = codec.encoder::<T>("any").await.expect("encoder");
    for value in values {
        let bytes = encoder.encode(value).expect("encodes");
        let datum = bytes.strip_prefix(encoder.header()).expect("header first");
        let reference = apache_avro::to_avro_datum(
            T::schema(),
            apache_avro::to_value(value).expect("to a value"),
        )
        .expect("apache-avro encodes");
        assert_eq!(datum, reference.as_slice(), "{value:?}");
    }
}

#[tokio::test]
async fn encoder_writes_what_apache_avro_writes() {
    let codec = Codec::single_object();
    writes_the_reference_datum(&codec, &forms()).await;
    writes_the_reference_datum(&codec, &responses()).await;
    writes_the_reference_datum(&codec, &flags()).await;
}

#[tokio::test]
async fn confluent_round_trips_every_record_type() {
    let fake = FakeRegistry::start(None).await;
    let codec = Codec::with_registry(fake.config()).unwrap();
    assert_eq!(
        codec.describe(),
        format!("confluent({})", fake.server.uri())
    );
    round_trip(&codec, "forms", &forms()).await;
    round_trip(&codec, "responses", &responses()).await;
    round_trip(&codec, "response-flags", &flags()).await;
    let state = fake.state.lock().unwrap();
    let mut subjects: Vec<_> = state.subjects.keys().cloned().collect();
    subjects.sort();
    assert_eq!(
        subjects,
        ["forms-value", "response-flags-value", "responses-value"]
    );
}

#[tokio::test]
async fn a_single_object_payload_is_decoded_by_another_codec() {
    // The producer and the consumer are different processes: nothing may depend on shared state.
    let bytes = encoded::<Response>(&Codec::single_object(), "responses", &responses()[1]).await;
    let back: Response = Codec::single_object().decode(&bytes).await.unwrap();
    assert_eq!(back, responses()[1]);
}

#[tokio::test]
async fn single_object_header_is_magic_and_the_spec_fingerprint() {
    // Known value from the Avro specification's test vectors: fingerprint64("null").
    assert_eq!(rabin_from_spec(br#""null""#), 0x63dd_24e7_cc25_8f8a);

    for (name, schema, header) in [
        (Form::FULL_NAME, Form::schema(), header_of::<Form>().await),
        (
            Response::FULL_NAME,
            Response::schema(),
            header_of::<Response>().await,
        ),
        (
            ResponseFlag::FULL_NAME,
            ResponseFlag::schema(),
            header_of::<ResponseFlag>().await,
        ),
    ] {
        let expected = rabin_from_spec(schema.canonical_form().as_bytes()).to_le_bytes();
        assert_eq!(header[..2], [0xC3, 0x01], "{name}");
        assert_eq!(header[2..10], expected, "{name}");
    }
}

async fn header_of<T: AvroRecord>() -> Vec<u8> {
    Codec::single_object()
        .encoder::<T>("t")
        .await
        .unwrap()
        .header()
        .to_vec()
}

#[tokio::test]
async fn reading_a_payload_as_the_wrong_record_type_is_a_decode_error() {
    let codec = Codec::single_object();
    let bytes = encoded::<Form>(&codec, "forms", &forms()[1]).await;
    let err = codec.decode::<Response>(&bytes).await.unwrap_err();
    assert!(matches!(err, CodecError::Decode(_)), "{err}");
    assert!(err.to_string().contains("io.formstream.v1.Form"), "{err}");
}

#[test]
fn encoders_and_codecs_are_send_sync_and_cheap_to_clone() {
    fn assert_send_sync_clone<T: Send + Sync + Clone>() {}
    assert_send_sync_clone::<Codec>();
    assert_send_sync_clone::<Encoder<Response>>();
}

#[test]
fn the_registry_credentials_never_print() {
    let config = RegistryConfig {
        url: "http://registry:8081".into(),
        username: Some("svc".into()),
        password: Some(Secret::new("hunter2")),
        timeout: std::time::Duration::from_secs(1),
    };
    let printed = format!("{config:?}");
    assert!(!printed.contains("hunter2"), "{printed}");
    assert!(!printed.contains("svc"), "{printed}");
    assert!(printed.contains("http://registry:8081"), "{printed}");
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn answer() -> impl Strategy<Value = Answer> {
        (
            "[a-z_]{1,12}",
            proptest::option::of(any::<String>()),
            proptest::option::of(-1e12f64..1e12),
            proptest::collection::vec("[a-z]{1,6}", 0..4),
        )
            .prop_map(|(question_key, text, number, choices)| Answer {
                question_key,
                text,
                number,
                choices,
            })
    }

    fn response() -> impl Strategy<Value = Response> {
        (
            any::<String>(),
            any::<i32>(),
            any::<i64>(),
            proptest::option::of("\\+[0-9]{8,14}"),
            proptest::collection::vec(answer(), 0..8),
        )
            .prop_map(
                |(response_id, revision, submitted_at, phone, answers)| Response {
                    response_id,
                    form_id: "f".into(),
                    form_version: 1,
                    organisation: "o".into(),
                    revision,
                    submitted_at,
                    received_at: submitted_at.wrapping_add(1),
                    collector: Collector {
                        id: "c".into(),
                        phone,
                    },
                    answers,
                    metadata_json: "{}".into(),
                },
            )
    }

    proptest! {
        #[test]
        fn any_response_round_trips(r in response()) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let codec = Codec::single_object();
            let back: Response = rt.block_on(async {
                let bytes = encoded::<Response>(&codec, "responses", &r).await;
                codec.decode(&bytes).await
            }).unwrap();
            prop_assert_eq!(back, r);
        }

        #[test]
        fn any_response_is_encoded_as_apache_avro_encodes_it(r in response()) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            rt.block_on(writes_the_reference_datum(&Codec::single_object(), &[r]));
        }
    }
}
