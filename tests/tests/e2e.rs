//! The end-to-end scenario of issue 15 at CI size (docs/design.md, every promise at once): the
//! gateway and the five processors as separate `formstream` processes (build it first: `cargo
//! build --bin formstream`), the Twilio and Sheets fakes as standalone servers, 20,000 responses
//! to 20 forms with rule breakers, corrections and poison records, one `kill -9` of each
//! processor (restarted under the same instance id) and a Twilio outage while they load.
//!
//! Invariant proved here: every response acknowledged is on the topic, has exactly one receipt
//! (when it has a phone), one sheet row at its latest revision, one committed flag outcome per
//! revision and one notification per flagged one, is counted once by slang, and the poison
//! records, and only they, are dead-lettered with a reason. `bench/e2e.sh` runs the same scenario
//! at 1,000,000 responses with more faults, and measures it (bench/E2E.md).

use std::path::PathBuf;

use formstream_tests::e2e::{Scenario, run};
use formstream_tests::runtime::{formstream_binary, init_logs};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_responses_through_every_processor_under_kills_and_an_outage() {
    init_logs();
    let dir = tempfile::tempdir().expect("a temp dir");
    let scenario = Scenario::ci(
        &formstream_tests::bootstrap(),
        dir.path(),
        &formstream_binary(),
        &PathBuf::from(env!("CARGO_BIN_EXE_fake-twilio")),
        &PathBuf::from(env!("CARGO_BIN_EXE_fake-sheets")),
    );
    let outcome = match run(scenario).await {
        Ok(outcome) => outcome,
        Err(error) => {
            // The processes' logs say why; keep them.
            let kept = dir.keep();
            panic!(
                "the scenario did not finish: {error:#} (logs in {})",
                kept.join("logs").display()
            );
        }
    };
    for check in &outcome.checks {
        eprintln!(
            "e2e: {} {}: {}",
            if check.passed { "pass" } else { "FAIL" },
            check.name,
            check.figures
        );
    }
    for restart in &outcome.restarts {
        eprintln!(
            "e2e: {} restarted at {:.0} s, first effect after {:?} s",
            restart.processor, restart.at, restart.first_effect
        );
    }
    eprintln!(
        "e2e: {} acknowledged by {:.0} s, last effect at {:.0} s",
        outcome.acked, outcome.ingest_seconds, outcome.last_effect_seconds
    );
    assert_eq!(
        outcome.refused, 0,
        "the gateway refused items: {:?}",
        outcome.refusals
    );
    assert_eq!(outcome.restarts.len(), 5, "one kill of each processor");
    let failed: Vec<_> = outcome.checks.iter().filter(|c| !c.passed).collect();
    if !failed.is_empty() {
        let kept = dir.keep();
        panic!(
            "checks failed: {failed:#?} (logs in {})",
            kept.join("logs").display()
        );
    }
}
