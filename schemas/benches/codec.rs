//! Per-record encode and decode cost of the codec, printed (a benchmark, not a test: timings on
//! shared machines are noise). Run `cargo bench -p formstream-schemas --bench codec`.

#[path = "../tests/helpers/mod.rs"]
mod helpers;

use std::time::Instant;

use formstream_schemas::*;
use helpers::*;

const RECORDS: usize = 20_000;

async fn measure(codec: &Codec, label: &str) {
    let response = responses()[1].clone();
    let encoder = codec.encoder::<Response>("responses").await.unwrap();

    let started = Instant::now();
    let mut bytes = 0;
    let mut last = Vec::new();
    for _ in 0..RECORDS {
        last = encoder.encode(&response).unwrap();
        bytes += last.len();
    }
    let encode = started.elapsed() / RECORDS as u32;

    let started = Instant::now();
    for _ in 0..RECORDS {
        let r: Response = codec.decode(&last).await.unwrap();
        assert_eq!(r.revision, response.revision);
    }
    let decode = started.elapsed() / RECORDS as u32;
    println!(
        "{label}: {} bytes/record, encode {encode:?}/record, decode {decode:?}/record",
        bytes / RECORDS
    );
}

#[tokio::main]
async fn main() {
    measure(&Codec::single_object(), "single-object").await;
    let fake = FakeRegistry::start(None).await;
    measure(&Codec::with_registry(fake.config()).unwrap(), "confluent").await;

    // Decoding data from an older/newer writer pays for schema resolution.
    let codec = Codec::single_object();
    let old = codec
        .encoder::<Response>("responses")
        .await
        .unwrap()
        .encode(&responses()[1])
        .unwrap();
    let started = Instant::now();
    for _ in 0..RECORDS {
        let _: ResponseV2 = codec.decode(&old).await.unwrap();
    }
    println!(
        "resolving v1 -> v2: decode {:?}/record",
        started.elapsed() / RECORDS as u32
    );
}
