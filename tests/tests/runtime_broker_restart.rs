//! A transactional processor (forward: its output is published and its offset committed in one
//! Kafka transaction) through a restart of the broker while it works, on a broker of the test's
//! own: every input record's output is committed exactly once (none lost with an aborted
//! transaction, none twice), read as `read_committed` consumers read it.
//!
//! Build the binary first (`cargo build --bin formstream`; `deploy/local/test.sh` does).

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use formstream_schemas::{Codec, Response};
use formstream_tests::runtime::*;
use formstream_tests::{BrokerInstance, read_topic, unique, wait_until};

/// The test's broker, destroyed (data included) when the test ends, failed or not.
struct OwnBroker(BrokerInstance);

impl OwnBroker {
    fn run(&self, command: &str) {
        let status = self
            .0
            .script(command)
            .status()
            .unwrap_or_else(|e| panic!("kafka.sh {command}: {e}"));
        assert!(status.success(), "kafka.sh {command} failed: {status}");
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        let _ = self.0.script("destroy").status();
    }
}

/// A `formstream` process under a supervisor: started again whenever it exits by itself (a
/// processor stops when its Kafka client fails fatally, as Kubernetes would restart it); killed
/// when dropped.
struct Supervised {
    stop: Arc<AtomicBool>,
    restarts: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Supervised {
    fn start(mut command: impl FnMut() -> Command + Send + 'static) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let restarts = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (stop, restarts) = (stop.clone(), restarts.clone());
            std::thread::spawn(move || {
                let mut child = command().spawn().expect("starting the process");
                while !stop.load(Ordering::Acquire) {
                    if let Ok(Some(_)) = child.try_wait() {
                        restarts.fetch_add(1, Ordering::AcqRel);
                        child = command().spawn().expect("starting the process again");
                    }
                    // A supervisor's poll interval, not a wait for a condition.
                    std::thread::sleep(Duration::from_millis(100));
                }
                let _ = child.kill();
                let _ = child.wait();
            })
        };
        Supervised {
            stop,
            restarts,
            thread: Some(thread),
        }
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_mid_transaction_loses_and_doubles_no_output() {
    let broker = OwnBroker(BrokerInstance::new("txn-restart"));
    broker.run("start");
    let bootstrap = broker.0.bootstrap();
    let topics = RuntimeTopics::create_on(&bootstrap, 3).await;
    let forwarded = topics.create_output_topic("forwarded").await;
    let producer = TestProducer::new(&topics);
    let form = test_form(&format!("form-{}", unique()));
    producer.form(&form).await;
    let form_id = form.id.clone();
    let batch = move |from: usize, to: usize| -> Vec<(i32, Response)> {
        (from..to)
            .map(|n| {
                let response = test_response(&form_id, &format!("r-{n}"), 0);
                ((n % 3) as i32, response)
            })
            .collect()
    };

    let log = std::env::temp_dir().join(format!("txn-restart-{}.log", unique()));
    let process = {
        let (log, forwarded, args) = (log.clone(), forwarded.clone(), topics.runtime_args());
        Supervised::start(move || {
            let mut command = Command::new(formstream_binary());
            command
                .args(["process", "forward", "--forward-topic", &forwarded])
                .args(&args)
                .args(["--instance-id", "forward-0"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&log)
                        .expect("the log file"),
                );
            command
        })
    };

    // Records keep arriving while the broker goes away and comes back, so that transactions are
    // open when it stops (the producer's deliveries wait for it).
    const TOTAL: usize = 30_000;
    const BATCH: usize = 250;
    let feeding = tokio::spawn(async move {
        for from in (0..TOTAL).step_by(BATCH) {
            producer.responses(&batch(from, from + BATCH)).await;
        }
    });
    let forwarded_so_far = {
        let (bootstrap, forwarded) = (bootstrap.clone(), forwarded.clone());
        move || {
            let (bootstrap, forwarded) = (bootstrap.clone(), forwarded.clone());
            async move {
                read_topic(&bootstrap, &forwarded, usize::MAX, Duration::from_secs(2))
                    .await
                    .map_or(0, |r| r.len())
            }
        }
    };
    assert!(
        wait_until(Duration::from_secs(120), || async {
            forwarded_so_far().await >= TOTAL / 10
        })
        .await,
        "the processor forwarded nothing before the restart"
    );
    let _broker = tokio::task::spawn_blocking(move || {
        broker.run("restart");
        broker
    })
    .await
    .expect("restarting the broker");
    feeding.await.expect("feeding the responses");

    let records = read_topic(&bootstrap, &forwarded, TOTAL, Duration::from_secs(240))
        .await
        .expect("reading the forward topic");
    let codec = Codec::single_object();
    let mut copies: BTreeMap<String, usize> = BTreeMap::new();
    for record in &records {
        let response: Response = codec
            .decode(&record.payload)
            .await
            .expect("a forwarded response");
        *copies.entry(response.response_id).or_default() += 1;
    }
    let doubled: Vec<&String> = copies
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| id)
        .collect();
    let missing = (0..TOTAL)
        .filter(|n| !copies.contains_key(&format!("r-{n}")))
        .count();
    assert!(
        missing == 0 && doubled.is_empty(),
        "after the broker restart, {missing} of {TOTAL} responses have no committed output and {} have more than one (first: {:?}); the processor was restarted {} times; its log: {}",
        doubled.len(),
        doubled.first(),
        process.restarts.load(Ordering::Acquire),
        log.display()
    );
}
