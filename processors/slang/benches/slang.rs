//! The slang benchmark, on the real broker: indexing throughput of the slang processor
//! over a topic of BENCH_SLANG_RECORDS (1,000,000) responses, then the search API's latency on the
//! resulting index (p50, p99 of each of the three queries, over HTTP with an API key, one client).
//!
//!   cargo bench -p formstream-slang --bench slang        # or bench/slang.sh, which adds Kafka's
//!                                                        # own ConsumerPerformance on the topic
//!
//! Answers: 3 to 12 words from a Zipf-distributed vocabulary mixing Hindi, Tamil, Bengali, Urdu and
//! Latin words (about 6,000 distinct words), 20 cities, 12 partitions. Indexing is timed from
//! the processor's start (the forms view is already caught up) to the index commit that covers
//! every partition's end; it includes that last commit. Prints one JSON line per figure, and the
//! topic's name (for the perf tool).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use formstream_runtime::RuntimeConfig;
use formstream_schemas::fixtures::{self, choice_answer, question, text_answer};
use formstream_schemas::{
    Choice, Codec, Form, FormVersion, Question, QuestionType, Response, Slang,
};
use formstream_slang::SlangArgs;
use hdrhistogram::Histogram;
use rand::distr::Distribution;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

// The allocator of the `formstream` binary, so that the figures are the product's.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const PARTITIONS: i32 = 12;
const CITIES: usize = 20;
const KEY: &str = "bench-slang-key";

const ROOTS: &[&str] = &[
    "क्या",
    "है",
    "भाई",
    "झकास",
    "एकदम",
    "बात",
    "पैसा",
    "कितना",
    "बिंदास",
    "जुगाड़",
    "यार",
    "मस्त",
    "வணக்கம்",
    "மச்சான்",
    "சூப்பர்",
    "சென்னை",
    "தலைவா",
    "செம",
    "கலக்கல்",
    "பணம்",
    "দাদা",
    "দারুণ",
    "খবর",
    "টাকা",
    "ভালো",
    "আছি",
    "জমিয়ে",
    "কী",
    "کیا",
    "حال",
    "بھائی",
    "زبردست",
    "پیسہ",
    "یار",
    "ٹھیک",
    "ہے",
    "bhai",
    "mast",
    "scene",
    "paisa",
    "jugaad",
    "ekdum",
    "bindaas",
    "machi",
    "ok",
    "kya",
];

#[derive(Parser)]
struct RuntimeArgs {
    #[command(flatten)]
    config: RuntimeConfig,
}

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The vocabulary: each root, and numbered variants of it, ranked for a Zipf draw.
fn vocabulary() -> Vec<String> {
    let mut words: Vec<String> = ROOTS.iter().map(|w| (*w).to_owned()).collect();
    for i in 1..130 {
        words.extend(ROOTS.iter().map(|w| format!("{w}{i}")));
    }
    words
}

fn form(id: &str) -> Form {
    let cities: Vec<Choice> = (0..CITIES)
        .map(|i| Choice {
            key: format!("city{i:02}"),
            text: format!("City {i}"),
        })
        .collect();
    let version = FormVersion {
        title: "Slang bench".into(),
        slang: Some(Slang {
            city_question: "city".into(),
            text_questions: vec!["slang".into()],
        }),
        ..fixtures::version(
            1,
            vec![
                Question {
                    choices: cities,
                    ..question("city", QuestionType::SingleChoice)
                },
                question("slang", QuestionType::Text),
            ],
        )
    };
    fixtures::form("acme", id, vec![version])
}

fn answer_text(rng: &mut StdRng, zipf: &rand_distr_zipf::Zipf, words: &[String]) -> String {
    let n = rng.random_range(3..=12);
    (0..n)
        .map(|_| words[zipf.sample(rng) - 1].as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A Zipf(s = 1.1) sampler over ranks 1..=n by inverse CDF (rand 0.9 has no Zipf).
mod rand_distr_zipf {
    use rand::Rng;
    use rand::distr::Distribution;

    pub struct Zipf {
        cdf: Vec<f64>,
    }

    impl Zipf {
        pub fn new(n: usize, s: f64) -> Self {
            let mut cdf = Vec::with_capacity(n);
            let mut total = 0.0;
            for k in 1..=n {
                total += 1.0 / (k as f64).powf(s);
                cdf.push(total);
            }
            for c in &mut cdf {
                *c /= total;
            }
            Zipf { cdf }
        }
    }

    impl Distribution<usize> for Zipf {
        fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> usize {
            let u: f64 = rng.random();
            self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1) + 1
        }
    }
}

async fn create_topics(bootstrap: &str, names: &[(&str, i32, bool)]) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|(name, partitions, compact)| {
            let topic = NewTopic::new(name, *partitions, TopicReplication::Fixed(1));
            if *compact {
                topic.set("cleanup.policy", "compact")
            } else {
                topic
            }
        })
        .collect();
    for result in admin.create_topics(&topics, &AdminOptions::new()).await? {
        result.map_err(|(topic, code)| anyhow::anyhow!("creating {topic}: {code}"))?;
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; nothing else is read from the command line.
    let records: usize = env("BENCH_SLANG_RECORDS", 1_000_000);
    let queries: usize = env("BENCH_SLANG_QUERIES", 2_000);
    let bootstrap: String = env("BENCH_SLANG_BOOTSTRAP", "localhost:9092".to_owned());
    let stamp = uuid::Uuid::new_v4().simple().to_string();
    let (forms_topic, responses_topic) = (
        format!("slangbench-{stamp}-forms"),
        format!("slangbench-{stamp}-responses"),
    );
    create_topics(
        &bootstrap,
        &[
            (&forms_topic, 1, true),
            (&responses_topic, PARTITIONS, false),
        ],
    )
    .await?;
    println!("{{\"topic\":\"{responses_topic}\",\"records\":{records}}}");

    // Fill the topics: Avro single-object values, form-id keys, response-id headers.
    let codec = Codec::single_object();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("compression.type", "lz4")
        .create()?;
    let form_id = format!("slangbench-{stamp}");
    let payload = codec
        .encoder::<Form>(&forms_topic)
        .await?
        .encode(&form(&form_id))?;
    producer
        .send(
            FutureRecord::to(&forms_topic)
                .key(&form_id)
                .payload(&payload),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)?;
    let encoder = codec.encoder::<Response>(&responses_topic).await?;
    let words = vocabulary();
    let zipf = rand_distr_zipf::Zipf::new(words.len(), 1.1);
    let mut rng = StdRng::seed_from_u64(42);
    let filled = Instant::now();
    let mut deliveries = Vec::new();
    for i in 0..records {
        let id = uuid::Uuid::from_u128(rng.random()).to_string();
        let city = format!("city{:02}", (zipf.sample(&mut rng) - 1) % CITIES);
        let answers = vec![
            choice_answer("city", &[&city]),
            text_answer("slang", &answer_text(&mut rng, &zipf, &words)),
        ];
        let response = Response {
            submitted_at: 1_764_000_000_000 + i as i64,
            received_at: 1_764_000_000_000 + i as i64,
            ..fixtures::response(&form_id, &id, answers)
        };
        let payload = encoder.encode(&response)?;
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "response_id",
                value: Some(id.as_bytes()),
            })
            .insert(Header {
                key: "revision",
                value: Some("0".as_bytes()),
            });
        let mut record = FutureRecord::to(&responses_topic)
            .partition((i % PARTITIONS as usize) as i32)
            .key(&form_id)
            .payload(&payload)
            .headers(headers);
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    deliveries.push(delivery);
                    break;
                }
                Err((_, r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(5));
                }
            }
        }
        if deliveries.len() >= 50_000 {
            for d in futures_join(std::mem::take(&mut deliveries)).await {
                d?;
            }
        }
    }
    for d in futures_join(deliveries).await {
        d?;
    }
    producer.flush(Duration::from_secs(60))?;
    eprintln!(
        "bench: filled {records} responses in {:.1}s",
        filled.elapsed().as_secs_f64()
    );

    // Index them.
    let dir = tempfile::tempdir()?;
    let keys = dir.path().join("keys.toml");
    let hash: String = formstream_core::api::keys::hash_key(KEY)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    std::fs::write(
        &keys,
        format!("[[keys]]\norganisation = \"acme\"\nsha256 = \"{hash}\"\n"),
    )?;
    let runtime = RuntimeArgs::try_parse_from([
        "slang",
        "--kafka-bootstrap",
        &bootstrap,
        "--forms-topic",
        &forms_topic,
        "--responses-topic",
        &responses_topic,
        "--group-id",
        &format!("slangbench-{stamp}"),
        "--dlq-topic",
        &format!("slangbench-{stamp}-dlq"),
        "--metrics-listen",
        "127.0.0.1:0",
        "--max-buffered-records",
        "50000",
    ])?
    .config;
    let index_dir: PathBuf = dir.path().join("index");
    let args = SlangArgs {
        index_dir: index_dir.clone(),
        search_listen: "127.0.0.1:0".parse()?,
        http: Default::default(),
        api_keys_file: keys,
        index_commit_interval: Duration::from_secs(2),
        index_commit_records: 200_000,
        writer_memory: 256 << 20,
        index_batch_size: 512,
    };
    let search = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let search_url = format!("http://{}", search.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let rss_before = status_kib("VmRSS:");
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    let slang = tokio::spawn(formstream_slang::run(
        args,
        runtime,
        Some(search),
        None,
        async move {
            let _ = stopped.await;
        },
    ));
    // Done when a commit's payload reaches every partition's end (12 partitions of records/12).
    let client = reqwest::Client::new();
    let per_partition = records.div_ceil(PARTITIONS as usize);
    let probe = format!("{search_url}/v1/forms/{form_id}/slang/slang/words?limit=1&cities=1000");
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        anyhow::ensure!(!slang.is_finished(), "the slang processor stopped");
        let Ok(r) = client.get(&probe).bearer_auth(KEY).send().await else {
            continue;
        };
        let Ok(body) = r.json::<serde_json::Value>().await else {
            continue;
        };
        let indexed: u64 = body["cities"].as_array().map_or(0, |c| {
            c.iter().map(|c| c["answers"].as_u64().unwrap_or(0)).sum()
        });
        if indexed as usize >= records {
            break;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_before;
    let _ = per_partition;
    println!(
        "{{\"figure\":\"indexing\",\"responses\":{records},\"seconds\":{elapsed:.2},\"responses_per_s\":{:.0},\"cpu_seconds\":{cpu:.1},\"cpu_us_per_response\":{:.1}}}",
        records as f64 / elapsed,
        cpu * 1e6 / records as f64
    );
    // The whole bench process (producer, processor, index, counts): an upper bound on the slang
    // processor's memory at this index size.
    println!(
        "{{\"figure\":\"memory\",\"rss_mib_before_indexing\":{:.0},\"rss_mib_after_indexing\":{:.0},\"peak_rss_mib\":{:.0}}}",
        rss_before / 1024.0,
        status_kib("VmRSS:") / 1024.0,
        status_kib("VmHWM:") / 1024.0
    );

    // Query latency, one request at a time, over HTTP.
    let base = format!("{search_url}/v1/forms/{form_id}/slang/slang");
    for kind in [
        "words_all_cities",
        "words_one_city",
        "cities_of_word",
        "answers_page",
    ] {
        let mut histogram = Histogram::<u64>::new(3)?;
        for i in 0..queries {
            let word = &words[zipf.sample(&mut rng) - 1];
            let city = format!("city{:02}", i % CITIES);
            let url = match kind {
                "words_all_cities" => format!("{base}/words?limit=20"),
                "words_one_city" => format!("{base}/words?city={city}&limit=20"),
                "cities_of_word" => format!("{base}/cities?word={}", enc(word)),
                _ => format!(
                    "{base}/answers?q={}&city={city}&limit=20&offset={}",
                    enc(word),
                    (i % 5) * 20
                ),
            };
            let t = Instant::now();
            let r = client.get(&url).bearer_auth(KEY).send().await?;
            anyhow::ensure!(r.status().is_success(), "{url}: {}", r.status());
            let _ = r.bytes().await?;
            histogram.record(t.elapsed().as_micros() as u64)?;
        }
        println!(
            "{{\"figure\":\"{kind}\",\"queries\":{queries},\"p50_ms\":{:.2},\"p99_ms\":{:.2},\"max_ms\":{:.2}}}",
            histogram.value_at_quantile(0.5) as f64 / 1000.0,
            histogram.value_at_quantile(0.99) as f64 / 1000.0,
            histogram.max() as f64 / 1000.0
        );
    }
    let _ = stop.send(());
    slang.await??;

    // A restart's cost: reopening the index reads the word counts its last commit saved
    // ("reopen"), or, without them (deleted here: what every open did before they were saved),
    // counts the words of every stored answer again ("reopen_rebuilt").
    let snapshot_bytes: u64 = [
        formstream_slang::snapshot::BASE,
        formstream_slang::snapshot::LOG,
    ]
    .iter()
    .filter_map(|file| std::fs::metadata(index_dir.join(file)).ok())
    .map(|m| m.len())
    .sum();
    for figure in ["reopen", "reopen_rebuilt"] {
        if figure == "reopen_rebuilt" {
            for file in [
                formstream_slang::snapshot::BASE,
                formstream_slang::snapshot::LOG,
            ] {
                let _ = std::fs::remove_file(index_dir.join(file));
            }
        }
        let reopened = Instant::now();
        let index = formstream_slang::SlangIndex::open(&index_dir, 256 << 20)?;
        println!(
            "{{\"figure\":\"{figure}\",\"documents\":{},\"seconds\":{:.2},\"counts_mib_estimated\":{:.0},\"snapshot_mib\":{:.0}}}",
            index.documents_count(),
            reopened.elapsed().as_secs_f64(),
            index.counts_bytes() as f64 / f64::from(1 << 20),
            snapshot_bytes as f64 / f64::from(1 << 20)
        );
    }
    Ok(())
}

fn enc(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

async fn futures_join(
    deliveries: Vec<rdkafka::producer::DeliveryFuture>,
) -> Vec<anyhow::Result<()>> {
    let mut out = Vec::with_capacity(deliveries.len());
    for d in deliveries {
        out.push(match d.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((e, _))) => Err(e.into()),
            Err(e) => Err(e.into()),
        });
    }
    out
}

/// A `kB` line of /proc/self/status (0 where there is none).
fn status_kib(name: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// CPU time (user and system) of this process so far, in seconds.
fn cpu_seconds() -> f64 {
    let ticks = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            // Fields after the command name (which may hold spaces) start after the last ')'.
            let rest = stat.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            Some(fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?)
        })
        .unwrap_or(0.0);
    // USER_HZ is 100 on Linux.
    ticks / 100.0
}
