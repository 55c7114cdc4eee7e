//! Lag, for /metrics: how far each partition's finished work is behind its end, in records and in
//! seconds. The ends come from librdkafka's statistics (every second), the positions from the
//! offset trackers.
//!
//! Invariant: lag is measured from the watermark (what may be committed), never from what was
//! merely fetched, so that a stuck record shows as lag until it finishes; a partition whose
//! position is not known yet reports nothing rather than a guess.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use formstream_core::time::now_millis;

use super::Engine;
use super::partitions::{PartitionState, TopicPartition};
use crate::processor::Processor;
use rdkafka::consumer::Consumer;

/// The end of each partition as librdkafka last saw it: the last stable offset, which is where
/// a read_committed consumer's lag ends.
#[derive(Debug, Default)]
pub struct PartitionEnds(Mutex<HashMap<TopicPartition, i64>>);

impl PartitionEnds {
    /// Takes the ends from a statistics report.
    pub fn update(&self, statistics: rdkafka::Statistics) {
        let Ok(mut ends) = self.0.lock() else {
            return;
        };
        for (topic, stats) in statistics.topics {
            for (partition, p) in stats.partitions {
                // -1 is librdkafka's internal "UA" partition, and offsets it does not know yet.
                let end = if p.ls_offset >= 0 {
                    p.ls_offset
                } else {
                    p.hi_offset
                };
                if partition >= 0 && end >= 0 {
                    ends.insert(TopicPartition::new(&topic, partition), end);
                }
            }
        }
    }

    pub fn end_of(&self, tp: &TopicPartition) -> Option<i64> {
        self.0.lock().ok()?.get(tp).copied()
    }
}

/// A partition's lag: records between its watermark and its end, and the age of the oldest of
/// them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lag {
    pub records: i64,
    pub seconds: f64,
    /// The watermark it is measured from.
    pub position: i64,
}

/// The lag of a partition whose end is `high`, at `now_ms` (wall clock) and `now`: in seconds,
/// the age of the oldest unfinished record, or, when no unfinished record is fetched (a paused
/// partition), the time since the watermark last moved. `None` before the first record.
pub fn lag_of(state: &PartitionState, high: i64, now_ms: i64, now: Instant) -> Option<Lag> {
    let tracker = state.tracker.as_ref()?;
    let position = tracker.watermark();
    let records = (high - position).max(0);
    let seconds = if records == 0 {
        0.0
    } else if let Some(oldest) = tracker.oldest_pending_timestamp() {
        (now_ms - oldest).max(0) as f64 / 1000.0
    } else {
        // Records not fetched yet (paused): at least as old as the stall.
        now.saturating_duration_since(state.last_progress)
            .as_secs_f64()
    };
    Some(Lag {
        records,
        seconds,
        position,
    })
}

impl<P: Processor> Engine<P> {
    /// Lag in records and seconds per partition, and the buffers, for /metrics.
    pub(super) fn report(&mut self) {
        let now_ms = now_millis();
        let now = Instant::now();
        let mut buffered = 0;
        // Where the consumer is: past the transaction markers after the last record it handed
        // over (a transactional writer's topic ends with one), which would otherwise count as lag
        // of one record for ever.
        let positions = self.consumer.position().ok();
        if let Ok(mut partitions) = self.partitions.lock() {
            for element in positions.iter().flat_map(|list| list.elements()) {
                if let rdkafka::Offset::Offset(position) = element.offset() {
                    let tp = TopicPartition::new(element.topic(), element.partition());
                    partitions.pass_to(tp, position, &mut self.moved);
                }
            }
        }
        if let Ok(partitions) = self.partitions.lock() {
            for (tp, state) in &partitions.states {
                buffered += state.buffered_records;
                let Some(high) = self.consumer.context().ends.end_of(tp) else {
                    continue;
                };
                if let Some(lag) = lag_of(state, high, now_ms, now) {
                    self.metrics.partition(
                        tp.topic,
                        tp.partition,
                        lag.records,
                        lag.seconds,
                        lag.position,
                    );
                }
            }
        }
        self.metrics.in_flight(self.lanes.in_flight(), buffered);
        self.report_targets();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::engine::partitions::Partitions;
    use crate::engine::partitions::tests::{admit, tp};

    #[test]
    fn nothing_is_reported_before_the_first_record() {
        let mut partitions = Partitions::default();
        partitions.assign(tp(0));
        let state = partitions.get(&tp(0)).expect("assigned");
        assert_eq!(lag_of(state, 10, 0, Instant::now()), None);
    }

    #[test]
    fn lag_counts_from_the_oldest_unfinished_record() {
        let mut partitions = Partitions::default();
        partitions.assign(tp(0));
        // Offsets 3 and 4, with timestamps 1,003 and 1,004 ms.
        admit(&mut partitions, tp(0), 3, None);
        admit(&mut partitions, tp(0), 4, None);
        let state = partitions.get(&tp(0)).expect("assigned");
        let lag = lag_of(state, 10, 3_003, Instant::now()).expect("a position");
        assert_eq!(lag.position, 3);
        assert_eq!(lag.records, 7);
        assert_eq!(lag.seconds, 2.0);
    }

    #[test]
    fn caught_up_is_zero_and_an_end_behind_the_position_is_not_negative() {
        let mut partitions = Partitions::default();
        partitions.assign(tp(0));
        admit(&mut partitions, tp(0), 3, None);
        let state = partitions.get(&tp(0)).expect("assigned");
        let lag = lag_of(state, 3, 99_999, Instant::now()).expect("a position");
        assert_eq!((lag.records, lag.seconds), (0, 0.0));
        let lag = lag_of(state, 1, 99_999, Instant::now()).expect("a position");
        assert_eq!(lag.records, 0);
    }

    #[test]
    fn unfetched_records_are_as_old_as_the_last_progress() {
        let mut partitions = Partitions::default();
        partitions.assign(tp(0));
        let mut moved = Default::default();
        let job = match admit(&mut partitions, tp(0), 0, None) {
            crate::engine::partitions::Admission::Runnable(job) => job,
            other => panic!("{other:?}"),
        };
        partitions.complete(
            crate::engine::partitions::tests::completion(&job),
            Instant::now(),
            &mut moved,
        );
        let state = partitions.get(&tp(0)).expect("assigned");
        let later = state.last_progress + Duration::from_secs(5);
        let lag = lag_of(state, 8, 0, later).expect("a position");
        assert_eq!(lag.records, 7);
        assert_eq!(lag.seconds, 5.0);
    }

    #[test]
    fn ends_are_read_from_the_statistics() {
        let histogram = r#"{"min": 0, "max": 0, "avg": 0, "sum": 0, "stddev": 0, "p50": 0,
            "p75": 0, "p90": 0, "p95": 0, "p99": 0, "p99_99": 0, "outofrange": 0, "hdrsize": 0,
            "cnt": 0}"#;
        let partitions = [(0, 40, 42), (1, -1, 17), (-1, 5, 5)]
            .map(|(p, ls, hi)| format!(r#""{p}": {}"#, partition(p, ls, hi)))
            .join(",");
        let text = format!(
            r#"{{"name": "c", "client_id": "c", "type": "consumer", "ts": 0, "time": 0,
            "age": 0, "replyq": 0, "msg_cnt": 0, "msg_size": 0, "msg_max": 0, "msg_size_max": 0,
            "tx": 0, "tx_bytes": 0, "rx": 0, "rx_bytes": 0, "txmsgs": 0, "txmsg_bytes": 0,
            "rxmsgs": 0, "rxmsg_bytes": 0, "simple_cnt": 0, "metadata_cache_cnt": 0,
            "brokers": {{}},
            "topics": {{"responses": {{"topic": "responses", "age": 0, "metadata_age": 0,
                "batchsize": {histogram}, "batchcnt": {histogram},
                "partitions": {{{partitions}}}}}}}}}"#
        );
        let statistics: rdkafka::Statistics =
            serde_json::from_str(&text).expect("a statistics report");
        let ends = PartitionEnds::default();
        ends.update(statistics);
        // The last stable offset when known, else the high watermark.
        assert_eq!(ends.end_of(&tp(0)), Some(40));
        assert_eq!(ends.end_of(&tp(1)), Some(17));
        assert_eq!(ends.end_of(&tp(-1)), None);
    }

    /// A partition's statistics, as librdkafka writes them.
    fn partition(partition: i32, ls_offset: i64, hi_offset: i64) -> String {
        format!(
            r#"{{"partition": {partition}, "broker": 1, "leader": 1, "desired": true,
            "unknown": false, "msgq_cnt": 0, "msgq_bytes": 0, "xmit_msgq_cnt": 0,
            "xmit_msgq_bytes": 0, "fetchq_cnt": 0, "fetchq_size": 0, "fetch_state": "active",
            "query_offset": 0, "next_offset": 0, "app_offset": 0, "stored_offset": 0,
            "committed_offset": 0, "eof_offset": 0, "lo_offset": 0, "hi_offset": {hi_offset},
            "ls_offset": {ls_offset}, "consumer_lag": 0, "consumer_lag_stored": 0,
            "txmsgs": 0, "txbytes": 0, "rxmsgs": 0, "rxbytes": 0, "msgs": 0,
            "rx_ver_drops": 0, "msgs_inflight": 0, "next_ack_seq": 0, "next_err_seq": 0,
            "acked_msgid": 0}}"#
        )
    }
}
