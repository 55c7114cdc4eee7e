//! `kill -9` of one of two processor processes, then a restart under the same `--instance-id`
//! (docs/design.md, promise 9: a restart resumes at once).
//!
//! Both processes are the `journal` test processor of the `formstream` binary (build it first:
//! `cargo build --bin formstream`), each a static member of the group (`group.instance.id`). The
//! session timeout is long (30 s), so a dead member is never evicted during the test: whatever
//! happens, happens through the rejoin itself.
//!
//! Invariant proved here (the rejoin mechanism, not its timing): the restarted process replaces
//! its dead predecessor in the group and takes back exactly the partitions it owned; the other
//! member sees no rebalance at all (nothing assigned, revoked or lost), the group never counts a
//! third member, and every record produced after the restart is journaled by the owner of its
//! partition before the kill. Without static membership the new process joins as a third member
//! and the cooperative assignor moves partitions away from the survivor, which this test reports.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use formstream_tests::deploy::free_port;
use formstream_tests::runtime::*;

const PARTITIONS: i32 = 6;
const BATCH: usize = 3_000;

/// A `formstream process journal` process with a stable instance id; SIGKILLed when dropped.
struct Member {
    child: Child,
    metrics: String,
    journal: PathBuf,
    log: PathBuf,
}

impl Member {
    fn start(topics: &RuntimeTopics, instance: &str, dir: &Path, life: &str) -> Self {
        let journal = dir.join(format!("{instance}-{life}.jsonl"));
        let log = dir.join(format!("{instance}-{life}.log"));
        let log_file = std::fs::File::create(&log).expect("creating the process log");
        let port = free_port();
        // The test's runtime flags, with a session timeout longer than the whole kill and
        // restart (the broker never evicts the dead member) and a known metrics port.
        let mut args = topics.runtime_args();
        for (flag, value) in [
            ("--session-timeout", "30s".to_owned()),
            ("--drain-timeout", "5s".to_owned()),
            ("--metrics-listen", format!("127.0.0.1:{port}")),
        ] {
            let at = args
                .iter()
                .position(|a| a == flag)
                .expect("a flag of the test's runtime arguments");
            args[at + 1] = value;
        }
        let child = Command::new(formstream_binary())
            .args(["process", "journal"])
            .args(args)
            .args(["--instance-id", instance])
            // The broker lists members by client id: it tells the two apart.
            .args(["-X", &format!("client.id={instance}")])
            .arg("--journal-path")
            .arg(&journal)
            .args(["--batch-size", "64"])
            .env("FORMSTREAM_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log file"))
            .stderr(log_file)
            .spawn()
            .expect("starting formstream process journal");
        Member {
            child,
            metrics: format!("http://127.0.0.1:{port}/metrics"),
            journal,
            log,
        }
    }

    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            panic!("a journal process exited ({status}); its log:\n{text}");
        }
    }

    /// The process's /metrics, or `None` while it does not answer.
    async fn scrape(&self) -> Option<String> {
        let response = reqwest::get(&self.metrics).await.ok()?;
        response.text().await.ok()
    }

    /// Partitions assigned, revoked and lost so far (its rebalance counters).
    async fn rebalances(&self) -> Option<[u64; 3]> {
        let text = self.scrape().await?;
        let count = |kind| {
            metric_value(
                &text,
                "formstream_processor_rebalances_total",
                &[("kind", kind)],
            ) as u64
        };
        Some([count("assigned"), count("revoked"), count("lost")])
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Response ids journaled, per partition, in `path`.
fn journaled_ids(path: &Path) -> BTreeMap<i32, BTreeSet<String>> {
    let mut ids: BTreeMap<i32, BTreeSet<String>> = BTreeMap::new();
    for entry in read_journal(path) {
        ids.entry(entry.partition)
            .or_default()
            .insert(entry.response_id);
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_restarted_under_its_instance_id_takes_back_its_partitions_without_a_rebalance() {
    init_logs();
    let topics = RuntimeTopics::create(PARTITIONS).await;
    let producer = TestProducer::new(&topics);
    let forms = forms_per_partition(&producer, PARTITIONS).await;
    producer.responses(&fresh_responses(&forms, BATCH)).await;
    let dir = tempfile::tempdir().expect("a temp dir");

    let mut a = Member::start(&topics, "member-a", dir.path(), "first");
    let mut b = Member::start(&topics, "member-b", dir.path(), "only");

    // Settled: the group stable with two members, every partition assigned to exactly one of
    // them, and the first batch journaled.
    let mut members = Vec::new();
    let mut settled = false;
    for _ in 0..1_200 {
        a.assert_running();
        b.assert_running();
        members = group_assignment(&topics).await.unwrap_or_default();
        let journaled: usize = [&a.journal, &b.journal]
            .iter()
            .flat_map(|p| journaled_ids(p).into_values())
            .map(|ids| ids.len())
            .sum();
        let assigned: usize = members.iter().map(|(_, p)| p.len()).sum();
        if members.len() == 2
            && members.iter().all(|(_, p)| !p.is_empty())
            && assigned == PARTITIONS as usize
            && journaled >= BATCH
            && group_state(&topics)
                .await
                .is_ok_and(|(state, _)| state == "Stable")
        {
            settled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        settled,
        "the two members did not settle within 120 s (members: {members:?})"
    );
    let owned_a = owned_by(&members, "member-a");
    let owned_b = owned_by(&members, "member-b");
    let b_before = b.rebalances().await.expect("B's metrics");

    a.kill();
    let mut a = Member::start(&topics, "member-a", dir.path(), "second");

    // Records produced after the restart, on every partition.
    let second = producer.responses(&fresh_responses(&forms, BATCH)).await;
    let mut expected: BTreeMap<i32, BTreeSet<String>> = BTreeMap::new();
    for (partition, response) in fresh_ids(&second) {
        expected.entry(partition).or_default().insert(response);
    }

    let mut done = false;
    let mut seen = Vec::new();
    for _ in 0..1_200 {
        a.assert_running();
        b.assert_running();
        if let Ok(members) = group_assignment(&topics).await
            && seen.last() != Some(&members)
        {
            seen.push(members);
        }
        let by_a = journaled_ids(&a.journal);
        let by_b = journaled_ids(&b.journal);
        done = expected.iter().all(|(partition, ids)| {
            ids.iter().all(|id| {
                by_a.get(partition).is_some_and(|s| s.contains(id))
                    || by_b.get(partition).is_some_and(|s| s.contains(id))
            })
        });
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        done,
        "the records produced after the restart were not all journaled within 120 s"
    );
    // The broker's view throughout: never a third member, and each member kept its partitions
    // (an empty assignment is the moment of the rejoin, before the restarted member synced).
    for members in &seen {
        assert!(
            members.len() <= 2,
            "the group counted the restarted member beside its dead predecessor: {members:?}"
        );
        for (client, partitions) in members {
            let expected = if client == "member-a" {
                &owned_a
            } else {
                &owned_b
            };
            assert!(
                partitions.is_empty() || partitions == expected,
                "{client} was assigned {partitions:?} after the restart, {expected:?} before"
            );
        }
    }
    let b_after = b.rebalances().await.expect("B's metrics after the restart");
    let a_again = a.rebalances().await.expect("A's metrics after the restart");
    let (by_a, by_b) = (journaled_ids(&a.journal), journaled_ids(&b.journal));
    for (partition, ids) in &expected {
        let owner = if owned_a.contains(partition) {
            &by_a
        } else {
            &by_b
        };
        let other = if owned_a.contains(partition) {
            &by_b
        } else {
            &by_a
        };
        assert!(
            ids.iter()
                .all(|id| owner.get(partition).is_some_and(|s| s.contains(id))),
            "partition {partition}: its post-restart records were not all journaled by its owner \
             before the kill"
        );
        assert!(
            ids.iter()
                .all(|id| !other.get(partition).is_some_and(|s| s.contains(id))),
            "partition {partition} moved to the other member after the restart"
        );
    }
    assert_eq!(
        a_again,
        // Each partition comes with its companion on the re-drive topic (engine/companion.rs).
        [2 * owned_a.len() as u64, 0, 0],
        "the restarted member was assigned its partitions once, and nothing else moved"
    );
    assert_eq!(
        b_after, b_before,
        "the other member went through a rebalance ([assigned, revoked, lost] partitions)"
    );
    drop(a);
    drop(b);
    topics.delete().await;
}

/// The partitions assigned to the member with client id `client`.
fn owned_by(members: &[(String, BTreeSet<i32>)], client: &str) -> BTreeSet<i32> {
    members
        .iter()
        .filter(|(c, _)| c == client)
        .flat_map(|(_, p)| p.iter().copied())
        .collect()
}

/// (partition, response id) of produced records.
fn fresh_ids(produced: &[Produced]) -> Vec<(i32, String)> {
    produced
        .iter()
        .map(|p| (p.partition, p.response_id.clone()))
        .collect()
}
