//! A processor that keeps its own offsets (`Processor::start_offsets`) starts its partitions there,
//! not at the group's committed offsets (the slang index resumes from the offsets stored
//! in its own commits).
//!
//! Invariant proved here: on assignment, a partition the processor names starts exactly at the
//! processor's offset, earlier or later than the group's commit: nothing below it is delivered
//! again and nothing from it on is skipped; a partition it does not name starts at the group's
//! commit. `finished_below` reports each partition's watermark up to its end.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use formstream_runtime::{Failure, Processor, Record};
use formstream_schemas::Response;
use formstream_tests::runtime::*;

const PARTITIONS: i32 = 3;

/// The test processor, plus start offsets of its own and a record of `finished_below`.
#[derive(Clone)]
struct Resuming {
    inner: TestProcessor,
    starts: HashMap<i32, i64>,
    finished: Arc<Mutex<BTreeMap<i32, i64>>>,
}

impl Processor for Resuming {
    type Value = Response;

    fn name(&self) -> &str {
        PROCESSOR
    }

    async fn handle(&self, record: &Record<Response>) -> Result<(), Failure> {
        self.inner.handle(record).await
    }

    fn start_offsets(&self, _topic: &str, _partitions: &[i32]) -> Option<HashMap<i32, i64>> {
        Some(self.starts.clone())
    }

    fn finished_below(&self, _topic: &str, partition: i32, offset: i64) {
        let mut finished = self.finished.lock().expect("finished lock");
        let entry = finished.entry(partition).or_insert(offset);
        *entry = (*entry).max(offset);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn assigned_partitions_start_at_the_processors_own_offsets() {
    init_logs();
    let topics = RuntimeTopics::create(PARTITIONS).await;
    let producer = TestProducer::new(&topics);
    let forms = forms_per_partition(&producer, PARTITIONS).await;

    // A first run commits the group at 30 on every partition.
    producer
        .responses(&fresh_responses(&forms, 30 * PARTITIONS as usize))
        .await;
    let first = TestProcessor::new();
    let runtime = spawn_runtime(first.clone(), topics.config(&[])).await;
    let committed = wait_committed_to_ends(&topics, Duration::from_secs(60)).await;
    assert!(committed.values().all(|&c| c == 30), "{committed:?}");
    runtime.stop().await.expect("the first run stops cleanly");

    // Ten more per partition, then a processor that says: partition 0 from 5 (before the group's
    // commit), partition 1 from 35 (after it), partition 2 from wherever the group is.
    producer
        .responses(&fresh_responses(&forms, 10 * PARTITIONS as usize))
        .await;
    let resuming = Resuming {
        inner: TestProcessor::new(),
        starts: HashMap::from([(0, 5), (1, 35)]),
        finished: Arc::default(),
    };
    let runtime = spawn_runtime(resuming.clone(), topics.config(&[])).await;
    let expected: BTreeMap<i32, BTreeSet<i64>> = BTreeMap::from([
        (0, (5..40).collect()),
        (1, (35..40).collect()),
        (2, (30..40).collect()),
    ]);
    eventually(
        Duration::from_secs(60),
        "every partition is finished to its end",
        || {
            let finished = resuming.finished.clone();
            async move {
                let finished = finished.lock().expect("finished lock").clone();
                finished == BTreeMap::from([(0, 40), (1, 40), (2, 40)])
            }
        },
    )
    .await;
    let effected = resuming.inner.state.effected_offsets();
    assert_eq!(
        effected, expected,
        "exactly the records from the processor's offsets (or the group's, for partition 2)"
    );
    // No record was handled twice either.
    assert_eq!(
        resuming.inner.state.effect_count(),
        expected.values().map(BTreeSet::len).sum::<usize>()
    );
    runtime.stop().await.expect("the second run stops cleanly");
    topics.delete().await;
}
