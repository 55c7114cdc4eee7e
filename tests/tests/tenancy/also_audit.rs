//! Every write to the gateway leaves an audit line naming the organisation and the API key's
//! name, never the key itself; reads leave none.

use formstream_tests::{ACME_KEY, spawn_app, valid_response};

use crate::support::CapturedLogs;

/// A current-thread runtime: the gateway's tasks run on this thread, under its log subscriber.
#[tokio::test(flavor = "current_thread")]
async fn every_write_is_audited_with_the_keys_name_never_the_key() {
    let (captured, _guard) = CapturedLogs::start("formstream::audit=info");

    let gateway = spawn_app().await;
    let form_id = gateway.create_typical_form().await;
    let (status, _) = gateway.submit(&form_id, &valid_response("Asha")).await;
    assert_eq!(status, 202);
    let refused = gateway
        .client
        .post(gateway.url("/v1/forms"))
        .bearer_auth("not-a-key")
        .json(&serde_json::json!({}))
        .send()
        .await
        .expect("POST");
    assert_eq!(refused.status(), 401);
    let read = gateway
        .acme(reqwest::Method::GET, &format!("/v1/forms/{form_id}"))
        .send()
        .await
        .expect("GET");
    assert_eq!(read.status(), 200);
    gateway.finish().await;

    let logs = captured.text();
    let lines: Vec<&str> = logs.lines().collect();
    let writes: Vec<&&str> = lines
        .iter()
        .filter(|l| l.contains("organisation=acme"))
        .collect();
    assert_eq!(writes.len(), 2, "two audited writes by acme: {logs}");
    assert!(
        writes[0].contains("key=test") && writes[0].contains("status=201"),
        "{logs}"
    );
    assert!(
        writes[1].contains(&format!("/v1/forms/{form_id}/responses"))
            && writes[1].contains("status=202"),
        "{logs}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("without an authenticated caller") && l.contains("status=401")),
        "{logs}"
    );
    assert!(!logs.contains("GET"), "reads are not audited: {logs}");
    assert!(
        !logs.contains(ACME_KEY) && !logs.contains("not-a-key"),
        "no key in the logs: {logs}"
    );
}
