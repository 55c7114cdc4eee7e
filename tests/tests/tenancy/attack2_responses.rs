//! Attack 2: another organisation's responses downstream. Response ids are chosen by clients, so
//! globex, knowing one of acme's response ids, submits and corrects its own response with that id,
//! on its own form of the same id, before and after acme's. Before identities were per
//! organisation this stopped acme's receipt (taken first), erased acme's answer from its slang
//! search and word counts (replaced by globex's corrections), and shared acme's CSV file.
//!
//! Now each is its own response: acme's receipt and collector SMS are sent exactly once (counted at
//! the Twilio fake), its slang entries and counts are intact, its spreadsheet (at the Sheets fake)
//! and its CSV file hold its row only; and globex's own effects happen too. In the runtime, the
//! ordering key is (organisation, response id): globex's records waiting on its failing target
//! never hold back acme's records of the same ids.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use formstream_schemas::{Form, Response};
use formstream_tests::runtime::{
    ProcessorState, RuntimeTopics, TestProcessor, TestProducer, eventually, init_logs,
    spawn_runtime, test_form, test_response, wait_committed_to_ends,
};
use formstream_tests::sheets_fake::FakeSheets;
use formstream_tests::twilio_fake::FakeTwilio;
use formstream_tests::{ACME_KEY, GLOBEX_KEY, spawn_app, unique};
use reqwest::Method;
use serde_json::Value;

use crate::support::*;

const ACME_RESPONDENT: &str = "+919876543210";
const ACME_COLLECTOR: &str = "+919820000017";
const GLOBEX_RESPONDENT: &str = "+919876511111";
const GLOBEX_COLLECTOR: &str = "+919820022222";

#[tokio::test]
async fn another_organisation_reusing_a_response_id_changes_nothing_of_the_victims() {
    init_logs();
    let gateway = spawn_app().await;
    let twilio = FakeTwilio::start().await;
    let sheets = FakeSheets::start().await;
    let dir = tempfile::tempdir().expect("a folder");
    let csv_dir = dir.path().join("sheets");

    // Both organisations have a form `household-...` with every action.
    let form = format!("household-{}", unique());
    let path = format!("/v1/forms/{form}/responses");
    // globex's form of the same id: its own form.
    let globex_form = form.clone();
    let globex_path = format!("/v1/forms/{globex_form}/responses");
    call(
        &gateway,
        ACME_KEY,
        Method::POST,
        "/v1/forms",
        Some(&household(&form, "Acme households")),
        201,
    )
    .await;
    call(
        &gateway,
        GLOBEX_KEY,
        Method::POST,
        "/v1/forms",
        Some(&household(&globex_form, "Globex households")),
        201,
    )
    .await;

    // globex takes the id first, then acme submits its response with it, then globex corrects
    // "its" response twice with other words.
    let id = uuid::Uuid::new_v4().to_string();
    let mallory =
        |slang: &str| flagged_answer(&id, "Mallory", GLOBEX_RESPONDENT, GLOBEX_COLLECTOR, slang);
    call(
        &gateway,
        GLOBEX_KEY,
        Method::POST,
        &globex_path,
        Some(&mallory("chori chori")),
        202,
    )
    .await;
    let asha = flagged_answer(&id, "Asha", ACME_RESPONDENT, ACME_COLLECTOR, "mast bhai");
    call(&gateway, ACME_KEY, Method::POST, &path, Some(&asha), 202).await;
    for revision in [1, 2] {
        let mut correction = mallory("kuch aur");
        correction["revision"] = revision.into();
        call(
            &gateway,
            GLOBEX_KEY,
            Method::PUT,
            &format!("{globex_path}/{id}"),
            Some(&correction),
            202,
        )
        .await;
    }

    let validate = start_validate(&gateway).await;
    let notify = start_notify_collectors(&gateway, &twilio).await;
    let receipts = start_receipts(&gateway, &twilio).await;
    let (slang, index) = start_slang(&gateway).await;
    let csv = start_sheets_local(&gateway, &csv_dir).await;
    let (google, _) = start_sheets_google(&gateway, &sheets, dir.path(), &[]).await;
    for running in [&validate, &receipts, &slang, &csv, &google, &notify] {
        running.wait_done().await;
    }

    // acme's receipt: sent once, acme's text; globex's own receipt went out too.
    let receipts_to = |phone: &str| twilio.messages_to(phone);
    let acme = receipts_to(ACME_RESPONDENT);
    assert_eq!(acme.len(), 1, "{acme:#?}");
    assert!(
        acme[0].body.starts_with("Acme households: thank you Asha."),
        "{}",
        acme[0].body
    );
    assert_eq!(receipts_to(GLOBEX_RESPONDENT).len(), 1);
    // acme's flagged response: its collector texted once; globex's three flagged revisions, three.
    let collector = receipts_to(ACME_COLLECTOR);
    assert_eq!(collector.len(), 1, "{collector:#?}");
    assert!(collector[0].body.contains(&id) && collector[0].body.contains("rev 0"));
    assert_eq!(receipts_to(GLOBEX_COLLECTOR).len(), 3);

    // acme's slang entry and counts are intact; globex's are its own.
    let committed = index.clone();
    tokio::task::spawn_blocking(move || committed.commit())
        .await
        .expect("the commit ran")
        .expect("committed");
    let scope = |organisation| formstream_slang::index::Scope {
        organisation,
        form_id: if organisation == "acme" {
            &form
        } else {
            &globex_form
        },
        question: "slang",
    };
    let words = |organisation| -> Vec<(String, u64)> {
        index
            .top_words(scope(organisation), Some("pune"), 10, 10)
            .expect("top words")
            .into_iter()
            .flat_map(|city| city.words)
            .map(|w| (w.word, w.answers))
            .collect()
    };
    assert_eq!(
        words("acme"),
        [("bhai".to_owned(), 1), ("mast".to_owned(), 1)]
    );
    assert_eq!(
        words("globex"),
        [("aur".to_owned(), 1), ("kuch".to_owned(), 1)]
    );
    let hits = index
        .search(scope("acme"), "mast", None, 10, 0)
        .expect("search");
    assert_eq!(hits.total, 1);
    assert_eq!(
        (hits.items[0].response_id.as_str(), hits.items[0].revision),
        (id.as_str(), 0)
    );

    // acme's CSV file and spreadsheet hold acme's row only, at revision 0; globex's its own.
    let file = |organisation: &str| {
        csv_rows(&csv_dir.join(organisation).join(format!(
            "{}.csv",
            if organisation == "acme" {
                &form
            } else {
                &globex_form
            }
        )))
    };
    let acme_file = file("acme");
    assert_eq!(acme_file.len(), 2, "{acme_file:?}");
    assert_eq!(
        (
            acme_file[1][0].as_str(),
            acme_file[1][1].as_str(),
            acme_file[1][4].as_str()
        ),
        (id.as_str(), "0", "Asha")
    );
    let globex_file = file("globex");
    assert_eq!(globex_file.len(), 2, "{globex_file:?}");
    assert_eq!(
        (globex_file[1][1].as_str(), globex_file[1][4].as_str()),
        ("2", "Mallory")
    );
    let sheet_of = |title: &str| -> Vec<Vec<Value>> {
        let found: Vec<_> = sheets
            .spreadsheets()
            .into_iter()
            .filter(|s| s.title.starts_with(title))
            .collect();
        assert_eq!(found.len(), 1, "one spreadsheet titled {title}: {found:#?}");
        sheets.rows(&found[0].id, "responses")
    };
    let acme_sheet = sheet_of("Acme households");
    assert_eq!(acme_sheet.len(), 2, "{acme_sheet:?}");
    assert_eq!(
        (
            acme_sheet[1][0].as_str(),
            acme_sheet[1][1].as_i64(),
            acme_sheet[1][4].as_str()
        ),
        (Some(id.as_str()), Some(0), Some("Asha"))
    );
    let globex_sheet = sheet_of("Globex households");
    assert_eq!(globex_sheet.len(), 2, "{globex_sheet:?}");
    assert_eq!(globex_sheet[1][1].as_i64(), Some(2));

    for running in [validate, notify, receipts, slang, csv, google] {
        running.finish().await;
    }
    gateway.finish().await;
}

/// How many successful effects each (organisation, response id) had.
fn effects_per_response(state: &ProcessorState) -> HashMap<(String, String), usize> {
    let mut counts = HashMap::new();
    for call in state.effects() {
        *counts
            .entry((call.organisation, call.response_id))
            .or_default() += 1;
    }
    counts
}

/// The runtime's ordering key, with the in-process test processor (a target per organisation):
/// globex takes each of acme's response ids first, in the same partition, while globex's target
/// is down, so globex's records wait on its open circuit. acme's records of the same ids flow
/// meanwhile, each effected once; globex's follow, once each, when its target is back. Fails when
/// the ordering key is the response id alone: acme's records wait behind globex's for the whole
/// outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_response_id_reused_by_another_organisation_never_holds_the_victims_records_back() {
    const DEADLINE: Duration = Duration::from_secs(60);
    init_logs();
    let topics = RuntimeTopics::create(1).await;
    let producer = TestProducer::new(&topics);
    let mut forms: Vec<Form> = Vec::new();
    for organisation in ["acme", "globex"] {
        let mut form = test_form(&format!("household-{}", unique()));
        form.organisation = organisation.to_owned();
        producer.form(&form).await;
        forms.push(form);
    }
    let answer = |form: &Form, id: &str| -> (i32, Response) {
        let mut response = test_response(&form.id, id, 0);
        response.organisation = form.organisation.clone();
        (0, response)
    };
    let ids: Vec<String> = (0..10).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    let records: Vec<(i32, Response)> = ids
        .iter()
        .flat_map(|id| [answer(&forms[1], id), answer(&forms[0], id)])
        .collect();

    let processor = TestProcessor::new();
    let state = processor.state.clone();
    state
        .behaviour
        .targets_per_organisation
        .store(true, Ordering::SeqCst);
    state.set_organisation_down("globex", true);
    producer.responses(&records).await;
    let runtime = spawn_runtime(processor, topics.config(&["--circuit-threshold", "3"])).await;

    let effected = |organisation: &str| {
        effects_per_response(&state)
            .into_iter()
            .filter(|((o, _), _)| o == organisation)
            .count()
    };
    eventually(
        DEADLINE,
        "every acme record is effected while globex's target is down",
        || async { effected("acme") == ids.len() },
    )
    .await;
    assert_eq!(effected("globex"), 0, "globex's target is down");

    state.set_organisation_down("globex", false);
    wait_committed_to_ends(&topics, DEADLINE).await;
    let done = effects_per_response(&state);
    for id in &ids {
        for organisation in ["acme", "globex"] {
            assert_eq!(
                done.get(&(organisation.to_owned(), id.clone())),
                Some(&1),
                "{organisation}'s response {id} effected once"
            );
        }
    }
    assert!(state.overlaps().is_empty(), "{:?}", state.overlaps());
    runtime.stop().await.expect("a clean stop");
    topics.delete().await;
}
