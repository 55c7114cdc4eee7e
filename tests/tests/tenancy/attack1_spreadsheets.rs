//! Attack 1: another organisation's spreadsheet. Every organisation exports through the sheets
//! exporter's one service account, so a spreadsheet shared with that account proves nothing about
//! who owns it. Before ownership was checked, globex's form naming acme's spreadsheet was accepted
//! (201) and the exporter rewrote its header and wrote globex's rows into it.
//!
//! Now, against the real gateway and the Sheets fake, with an organisations file that lists acme's
//! spreadsheet under acme: globex naming it (at creation or in an update) gets 422, exactly as for
//! a spreadsheet nobody lists, so the answer tells globex nothing about whose it is; `create:
//! true` stays open to everyone. A form that got past a gateway (one without the file) has its
//! rows dead-lettered by the exporter, with the reason, and acme's spreadsheet holds acme's rows
//! only.

use formstream_runtime::dlq::headers;
use formstream_schemas::Sheets as SheetsAction;
use formstream_tests::runtime::{TestProducer, init_logs, test_form, test_response};
use formstream_tests::sheets_fake::FakeSheets;
use formstream_tests::{
    ACME_KEY, GLOBEX_KEY, GatewayOptions, assert_problem, field_problems, pairs, read_topic,
    spawn_gateway, unique,
};
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::*;

/// `body` with its sheets action replaced by `sheets`.
fn exporting(mut body: Value, sheets: Value) -> Value {
    body["sheets"] = sheets;
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn another_organisations_spreadsheet_is_refused_at_save_and_by_the_exporter() {
    init_logs();
    let google = FakeSheets::start().await;
    let dir = tempfile::tempdir().expect("a folder");
    // acme's spreadsheet, which the operator lists under acme; and one nobody lists.
    let acme_sheet = google.create_spreadsheet("acme's responses");
    let nobodys_sheet = google.create_spreadsheet("nobody's");
    let owners = dir.path().join("organisations.toml");
    std::fs::write(
        &owners,
        format!("[acme]\nspreadsheets = [\"{acme_sheet}\"]\n[globex]\nspreadsheets = []\n"),
    )
    .expect("writing the organisations file");
    let owners_flag = owners.to_str().expect("a UTF-8 path").to_owned();
    let gateway =
        spawn_gateway(GatewayOptions::default().arg("--organisations-file", &owners_flag)).await;

    // acme exports to its own spreadsheet.
    let acme_form = format!("household-{}", unique());
    call(
        &gateway,
        ACME_KEY,
        Method::POST,
        "/v1/forms",
        Some(&exporting(
            household(&acme_form, "Acme households"),
            json!({"spreadsheet_id": acme_sheet}),
        )),
        201,
    )
    .await;

    // globex names acme's spreadsheet, then one nobody lists: the same 422 for both.
    let globex_form = format!("household-{}", unique());
    let mut refusals = Vec::new();
    for sheet in [&acme_sheet, &nobodys_sheet] {
        let refused = gateway
            .globex(Method::POST, "/v1/forms")
            .json(&exporting(
                household(&globex_form, "Globex households"),
                json!({"spreadsheet_id": sheet}),
            ))
            .send()
            .await
            .expect("POST /v1/forms");
        let problem = assert_problem(refused, 422).await;
        assert_eq!(
            field_problems(&problem),
            pairs(&[("/sheets/spreadsheet_id", "spreadsheet_not_owned")]),
            "{problem}"
        );
        refusals.push(problem.to_string().replace(sheet.as_str(), "<id>"));
    }
    assert_eq!(
        refusals[0], refusals[1],
        "nothing tells globex whose spreadsheet it named"
    );
    // `create: true` is globex's to use; an update naming acme's spreadsheet is refused too, and
    // leaves globex's form as it was.
    call(
        &gateway,
        GLOBEX_KEY,
        Method::POST,
        "/v1/forms",
        Some(&household(&globex_form, "Globex households")),
        201,
    )
    .await;
    let update = gateway
        .globex(Method::PUT, &format!("/v1/forms/{globex_form}"))
        .json(&exporting(
            household(&globex_form, "Globex households"),
            json!({"spreadsheet_id": acme_sheet}),
        ))
        .send()
        .await
        .expect("PUT");
    assert_problem(update, 422).await;
    let unchanged = call(
        &gateway,
        GLOBEX_KEY,
        Method::GET,
        &format!("/v1/forms/{globex_form}"),
        None,
        200,
    )
    .await;
    assert_eq!(unchanged["version"], 1);
    assert_eq!(unchanged["sheets"], json!({"create": true}), "{unchanged}");

    // A form naming acme's spreadsheet that got past a gateway (one started without the file):
    // published straight to the forms topic, with a response to it.
    let topics = processor_topics(&gateway);
    let producer = TestProducer::new(&topics);
    let mut smuggled = test_form(&format!("smuggled-{}", unique()));
    smuggled.organisation = "globex".to_owned();
    smuggled.versions[0].sheets = Some(SheetsAction {
        spreadsheet_id: Some(acme_sheet.clone()),
    });
    producer.form(&smuggled).await;
    let mut intruder = test_response(&smuggled.id, &uuid::Uuid::new_v4().to_string(), 0);
    intruder.organisation = "globex".to_owned();
    producer.responses(&[(0, intruder.clone())]).await;
    // acme's own response.
    let id = uuid::Uuid::new_v4().to_string();
    call(
        &gateway,
        ACME_KEY,
        Method::POST,
        &format!("/v1/forms/{acme_form}/responses"),
        Some(&flagged_answer(
            &id,
            "Asha",
            "+919876543210",
            "+919820000017",
            "mast bhai",
        )),
        202,
    )
    .await;

    let (exporter, _) = start_sheets_google(
        &gateway,
        &google,
        dir.path(),
        &["--organisations-file".to_owned(), owners_flag],
    )
    .await;
    exporter.wait_done().await;

    // acme's spreadsheet holds its header and acme's row, nothing of globex's.
    let rows = google.rows(&acme_sheet, "responses");
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[1][0].as_str(), Some(id.as_str()));
    let spreadsheet = google.spreadsheet(&acme_sheet).expect("acme's spreadsheet");
    for tab in &spreadsheet.tabs {
        assert!(
            !format!("{:?}", tab.rows()).contains(&intruder.response_id),
            "globex's row in acme's tab {}",
            tab.title
        );
    }
    // Nobody's spreadsheet is untouched.
    let nobodys = google
        .spreadsheet(&nobodys_sheet)
        .expect("nobody's spreadsheet");
    assert_eq!(nobodys.tabs.len(), 1);
    assert!(nobodys.tabs[0].rows().is_empty());
    // globex's row is dead-lettered, saying why.
    let letters = read_topic(&gateway.bootstrap, &exporter.topics.dlq, 1, DEADLINE)
        .await
        .expect("reading the dead-letter topic");
    assert_eq!(letters.len(), 1, "{letters:#?}");
    let message = letters[0]
        .headers
        .get(headers::ERROR_MESSAGE)
        .cloned()
        .unwrap_or_default();
    assert!(
        message.contains(&format!("names spreadsheet {acme_sheet}"))
            && message.contains("not one that organisation owns"),
        "{message}"
    );
    assert_eq!(
        letters[0].headers.get("response_id").map(String::as_str),
        Some(intruder.response_id.as_str())
    );

    exporter.finish().await;
    gateway.finish().await;
}
