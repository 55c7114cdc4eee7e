//! Attack 3: form ids change owner. Before a form was (organisation, form id), the forms view
//! replaced a form whatever its organisation: globex creating a form of the id acme uses, on
//! another gateway replica at the same moment, took it over (acme's unprocessed responses then
//! went to globex's actions), and creating it on the same replica answered 409, which told globex
//! that acme has a form of that name.
//!
//! Now both organisations create a form `household-...` at the same moment on two replicas of the
//! real gateway, and each is its own: both 201, each replica (and a third started afterwards from
//! the forms topic) serves each organisation its own form, only one's own id answers 409, and
//! globex's update leaves acme's form as it was. Answers to both forms, with one response id, take
//! each form's own actions downstream: acme's receipt has acme's text, each CSV file holds its own
//! organisation's row, and each organisation's flags list holds its own response only.

use std::time::Duration;

use formstream_tests::runtime::{eventually, init_logs};
use formstream_tests::twilio_fake::FakeTwilio;
use formstream_tests::{
    ACME_KEY, GLOBEX_KEY, GatewayOptions, TestGateway, read_topic, send_json, spawn_app,
    spawn_gateway, unique,
};
use reqwest::Method;
use serde_json::Value;

use crate::support::*;

const ACME_RESPONDENT: &str = "+919876543210";
const ACME_COLLECTOR: &str = "+919820000017";
const GLOBEX_RESPONDENT: &str = "+919876511111";
const GLOBEX_COLLECTOR: &str = "+919820022222";

/// How long another replica may take to read a form from the topic.
const SEEN: Duration = Duration::from_secs(30);

/// `GET path` with `key` on `gateway`: (status, body).
async fn get(gateway: &TestGateway, key: &str, path: &str) -> (u16, Value) {
    send_json(gateway.as_key(key, Method::GET, path)).await
}

/// Waits until `gateway` serves each organisation its own form `form`, at `versions` (acme's,
/// globex's).
async fn wait_own_forms(gateway: &TestGateway, form: &str, versions: (i64, i64)) {
    let path = format!("/v1/forms/{form}");
    let what = format!(
        "{} serves acme and globex their own form {form}",
        gateway.address
    );
    eventually(SEEN, &what, || {
        let path = &path;
        async move {
            let (acme_status, acme) = get(gateway, ACME_KEY, path).await;
            let (globex_status, globex) = get(gateway, GLOBEX_KEY, path).await;
            (acme_status, globex_status) == (200, 200)
                && acme["organisation"] == "acme"
                && acme["title"] == "Acme households"
                && acme["version"] == versions.0
                && globex["organisation"] == "globex"
                && globex["title"] == "Globex households"
                && globex["version"] == versions.1
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn another_organisations_form_of_the_same_id_is_another_form() {
    init_logs();
    let first = spawn_app().await;
    let second = spawn_gateway(GatewayOptions {
        topics: Some(first.topics.clone()),
        ..GatewayOptions::default()
    })
    .await;
    let twilio = FakeTwilio::start().await;
    let dir = tempfile::tempdir().expect("a folder");
    let csv_dir = dir.path().join("sheets");

    // Both create `household-...` at the same moment, on two replicas: both 201.
    let form = format!("household-{}", unique());
    let (acme_form, globex_form) = (
        household(&form, "Acme households"),
        household(&form, "Globex households"),
    );
    let (acme, globex) = tokio::join!(
        call(
            &first,
            ACME_KEY,
            Method::POST,
            "/v1/forms",
            Some(&acme_form),
            201
        ),
        call(
            &second,
            GLOBEX_KEY,
            Method::POST,
            "/v1/forms",
            Some(&globex_form),
            201
        ),
    );
    assert_eq!(acme["organisation"], "acme");
    assert_eq!(acme["id"], form.as_str());
    assert_eq!(globex["organisation"], "globex");
    assert_eq!(globex["id"], form.as_str());
    for gateway in [&first, &second] {
        wait_own_forms(gateway, &form, (1, 1)).await;
    }
    // Each list holds the organisation's own form only.
    for (key, organisation) in [(ACME_KEY, "acme"), (GLOBEX_KEY, "globex")] {
        let (status, list) = get(&second, key, "/v1/forms").await;
        assert_eq!(status, 200);
        let forms = list["forms"].as_array().expect("a list");
        assert_eq!(forms.len(), 1, "{list}");
        assert_eq!(forms[0]["organisation"], organisation);
    }

    // Only one's own id is taken: 409 for acme's second form of that id, on either replica.
    for gateway in [&first, &second] {
        call(
            gateway,
            ACME_KEY,
            Method::POST,
            "/v1/forms",
            Some(&acme_form),
            409,
        )
        .await;
    }
    // globex updates its form; acme's stays at version 1.
    let mut update = globex_form.clone();
    update["description"] = "Second version".into();
    let updated = call(
        &first,
        GLOBEX_KEY,
        Method::PUT,
        &format!("/v1/forms/{form}"),
        Some(&update),
        200,
    )
    .await;
    assert_eq!(updated["version"], 2);
    for gateway in [&first, &second] {
        wait_own_forms(gateway, &form, (1, 2)).await;
    }
    // The forms topic keeps both forms (keys name the organisation, so compaction keeps each),
    // and a gateway started now rebuilds both from it.
    let records = read_topic(&first.bootstrap, &first.topics.forms, 3, SEEN)
        .await
        .expect("reading the forms topic");
    let mut keys: Vec<String> = records.into_iter().filter_map(|r| r.key).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys, [format!("acme/{form}"), format!("globex/{form}")]);
    let third = spawn_gateway(GatewayOptions {
        topics: Some(first.topics.clone()),
        ..GatewayOptions::default()
    })
    .await;
    wait_own_forms(&third, &form, (1, 2)).await;

    // One response id in both forms, each flagged; globex corrects its own once more.
    let id = uuid::Uuid::new_v4().to_string();
    let path = format!("/v1/forms/{form}/responses");
    let asha = flagged_answer(&id, "Asha", ACME_RESPONDENT, ACME_COLLECTOR, "mast bhai");
    call(&second, ACME_KEY, Method::POST, &path, Some(&asha), 202).await;
    let mut mallory = flagged_answer(
        &id,
        "Mallory",
        GLOBEX_RESPONDENT,
        GLOBEX_COLLECTOR,
        "chori chori",
    );
    call(&first, GLOBEX_KEY, Method::POST, &path, Some(&mallory), 202).await;
    mallory["revision"] = 1.into();
    call(
        &first,
        GLOBEX_KEY,
        Method::PUT,
        &format!("{path}/{id}"),
        Some(&mallory),
        202,
    )
    .await;

    let validate = start_validate(&first).await;
    let receipts = start_receipts(&first, &twilio).await;
    let csv = start_sheets_local(&first, &csv_dir).await;
    for running in [&validate, &receipts, &csv] {
        running.wait_done().await;
    }

    // Each receipt was rendered from its own organisation's form.
    let acme_receipts = twilio.messages_to(ACME_RESPONDENT);
    assert_eq!(acme_receipts.len(), 1, "{acme_receipts:#?}");
    assert!(
        acme_receipts[0]
            .body
            .starts_with("Acme households: thank you Asha."),
        "{}",
        acme_receipts[0].body
    );
    let globex_receipts = twilio.messages_to(GLOBEX_RESPONDENT);
    assert_eq!(globex_receipts.len(), 1, "{globex_receipts:#?}");
    assert!(
        globex_receipts[0]
            .body
            .starts_with("Globex households: thank you Mallory."),
        "{}",
        globex_receipts[0].body
    );
    // Each CSV file holds its own organisation's row.
    let rows =
        |organisation: &str| csv_rows(&csv_dir.join(organisation).join(format!("{form}.csv")));
    let acme_rows = rows("acme");
    assert_eq!(acme_rows.len(), 2, "{acme_rows:?}");
    assert_eq!(
        (
            acme_rows[1][0].as_str(),
            acme_rows[1][1].as_str(),
            acme_rows[1][4].as_str()
        ),
        (id.as_str(), "0", "Asha")
    );
    let globex_rows = rows("globex");
    assert_eq!(globex_rows.len(), 2, "{globex_rows:?}");
    assert_eq!(
        (globex_rows[1][1].as_str(), globex_rows[1][4].as_str()),
        ("1", "Mallory")
    );
    // Each organisation's flags list (on every replica) holds its own response only: acme's at
    // revision 0, globex's at revision 1.
    let flags = format!("/v1/forms/{form}/flags");
    let id = &id;
    for gateway in [&first, &second, &third] {
        for (key, revision, collector) in [
            (ACME_KEY, 0, "collector-of-Asha"),
            (GLOBEX_KEY, 1, "collector-of-Mallory"),
        ] {
            let what = format!("{} lists one flag at revision {revision}", gateway.address);
            let flags = &flags;
            eventually(SEEN, &what, || async move {
                let (status, listing) = get(gateway, key, flags).await;
                let items = listing["items"].as_array().cloned().unwrap_or_default();
                status == 200
                    && items.len() == 1
                    && items[0]["response_id"] == id.as_str()
                    && items[0]["revision"] == revision
                    && items[0]["collector_id"] == collector
            })
            .await;
        }
    }

    for running in [validate, receipts, csv] {
        running.finish().await;
    }
    third.finish().await;
    second.finish().await;
    first.finish().await;
}
