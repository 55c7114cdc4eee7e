//! Bad payloads: garbage, truncation, unknown schemas. Each must be a clear error, never a panic
//! or a huge allocation.

mod helpers;

use formstream_schemas::*;
use helpers::*;
use proptest::prelude::*;

async fn valid_payload() -> Vec<u8> {
    encoded::<Response>(&Codec::single_object(), "responses", &responses()[1]).await
}

#[tokio::test]
async fn garbage_is_a_decode_error_naming_the_first_byte() {
    let err = Codec::single_object()
        .decode::<Response>(b"{\"json\":true}")
        .await
        .unwrap_err();
    assert!(matches!(err, CodecError::Decode(_)), "{err:?}");
    assert!(err.to_string().contains("0x7b"), "{err}");
    let err = Codec::single_object()
        .decode::<Response>(b"")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("empty"), "{err}");
}

#[tokio::test]
async fn every_truncation_is_a_decode_error() {
    let codec = Codec::single_object();
    let payload = valid_payload().await;
    for len in 0..payload.len() {
        let err = codec.decode::<Response>(&payload[..len]).await.unwrap_err();
        assert!(matches!(err, CodecError::Decode(_)), "at {len}: {err:?}");
    }
    let mut longer = payload.clone();
    longer.push(0);
    let err = codec.decode::<Response>(&longer).await.unwrap_err();
    assert!(err.to_string().contains("trailing"), "{err}");
}

#[tokio::test]
async fn truncated_string_says_truncated() {
    let payload = valid_payload().await;
    let err = Codec::single_object()
        .decode::<Response>(&payload[..20])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");
}

#[tokio::test]
async fn an_unknown_fingerprint_is_unknown_schema() {
    let mut payload = valid_payload().await;
    payload[2..10].copy_from_slice(&0x0123_4567_89ab_cdefu64.to_le_bytes());
    let err = Codec::single_object()
        .decode::<Response>(&payload)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            CodecError::UnknownSchema(SchemaId::Fingerprint(0x0123_4567_89ab_cdef))
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("0x0123456789abcdef"), "{err}");
}

#[tokio::test]
async fn a_huge_array_count_is_refused_before_allocating() {
    // A Form whose `versions` array claims 2^28 items in a 20-byte payload. apache-avro alone
    // accepts that count (it is under its 512 MiB item limit) and reserves 2^28 `Value`s.
    let form_header = Codec::single_object()
        .encoder::<Form>("forms")
        .await
        .unwrap()
        .header()
        .to_vec();
    let mut payload = form_header;
    payload.extend([0, 0, 0]); // id "", organisation "", created_at 0
    let mut n: u64 = 1 << 29; // zig-zag of 2^28
    while n >= 0x80 {
        payload.push((n as u8) | 0x80);
        n >>= 7;
    }
    payload.push(n as u8);
    let err = Codec::single_object()
        .decode::<Form>(&payload)
        .await
        .unwrap_err();
    assert!(matches!(err, CodecError::Decode(_)), "{err:?}");
    assert!(err.to_string().contains("claims"), "{err}");
}

#[tokio::test]
async fn an_enum_index_out_of_range_is_a_decode_error() {
    let codec = Codec::single_object();
    let flag = &flags()[0];
    let mut payload = encoded::<ResponseFlag>(&codec, "f", flag).await;
    // `status` follows six fields; find it by re-encoding with the other status and diffing.
    let other = ResponseFlag {
        status: FlagStatus::Flagged,
        ..flag.clone()
    };
    let other = encoded::<ResponseFlag>(&codec, "f", &other).await;
    let at = payload
        .iter()
        .zip(&other)
        .position(|(a, b)| a != b)
        .unwrap();
    payload[at] = 0x08; // index 4 of a 2-symbol enum
    let err = codec.decode::<ResponseFlag>(&payload).await.unwrap_err();
    assert!(err.to_string().contains("enum"), "{err}");
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let codec = Codec::single_object();
        let rt = runtime();
        let _ = rt.block_on(codec.decode::<Response>(&bytes));
        let _ = rt.block_on(codec.decode::<Form>(&bytes));
        let _ = rt.block_on(codec.decode::<ResponseFlag>(&bytes));
    }

    #[test]
    fn a_valid_header_with_arbitrary_datum_never_panics(tail in proptest::collection::vec(any::<u8>(), 0..256)) {
        let rt = runtime();
        let codec = Codec::single_object();
        for header in [
            rt.block_on(codec.encoder::<Response>("r")).unwrap().header().to_vec(),
            rt.block_on(codec.encoder::<Form>("f")).unwrap().header().to_vec(),
            rt.block_on(codec.encoder::<ResponseFlag>("g")).unwrap().header().to_vec(),
        ] {
            let mut payload = header;
            payload.extend(&tail);
            let _ = rt.block_on(codec.decode::<Response>(&payload));
            let _ = rt.block_on(codec.decode::<Form>(&payload));
            let _ = rt.block_on(codec.decode::<ResponseFlag>(&payload));
        }
    }

    #[test]
    fn corrupting_a_valid_payload_never_panics(at in 10usize..200, byte in any::<u8>()) {
        let rt = runtime();
        let codec = Codec::single_object();
        let mut payload = rt.block_on(valid_payload());
        let at = at % payload.len();
        payload[at] = byte;
        let _ = rt.block_on(codec.decode::<Response>(&payload));
    }
}
