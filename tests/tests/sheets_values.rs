//! The Sheets fake's `values.append` against the exporter's own client (`SheetsApi`), as Google
//! answers it: after the last row with data; `OVERWRITE` fills the grid's empty rows before adding
//! any, `INSERT_ROWS` adds one per row; `valueInputOption` required, `RAW` stored as sent (the
//! read-back returns it), `USER_ENTERED` parsed; the cell limit, the 50,000 characters of a cell
//! and the grid's columns refused with Google's messages and nothing applied; scripted faults
//! applied to it as to any write.
//!
//! Invariant proved: what the exporter's writes by `values.append` rely on (where rows go, what a
//! cell holds, what the cell limit counts, that a lost answer may still have been applied) holds
//! in the fake the exporter's tests use.

use std::sync::Arc;
use std::time::Duration;

use formstream_sheets::api::{ApiError, Appended, SheetsApi};
use formstream_sheets::auth::{ServiceAccountKey, TokenSource};
use formstream_tests::sheets_fake::{FakeSheets, Fault};
use serde_json::{Value, json};

struct Client {
    api: SheetsApi,
    tokens: Arc<TokenSource>,
    http: reqwest::Client,
    base: String,
}

impl Client {
    fn new(fake: &FakeSheets) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("a client");
        let key = ServiceAccountKey::parse(&fake.credentials_json()).expect("the key");
        let tokens = Arc::new(TokenSource::new(key, http.clone()).expect("tokens"));
        let api = SheetsApi::new(&fake.base_url(), http.clone(), tokens.clone(), 6000, 6000);
        Client {
            api,
            tokens,
            http,
            base: fake.base_url(),
        }
    }

    /// A `values.append` with `query` as given: its status and body.
    async fn append(&self, id: &str, tab: &str, query: &str, rows: Value) -> (u16, Value) {
        let token = self.tokens.token().await.expect("a token");
        let answer = self
            .http
            .post(format!(
                "{}/v4/spreadsheets/{id}/values/{tab}:append?{query}",
                self.base
            ))
            .bearer_auth(token.expose())
            .json(&json!({"majorDimension": "ROWS", "values": rows}))
            .send()
            .await
            .expect("an answer");
        let status = answer.status().as_u16();
        (status, answer.json().await.unwrap_or(Value::Null))
    }
}

fn grid(fake: &FakeSheets, id: &str, tab: &str) -> (u64, u64) {
    let sheet = fake.spreadsheet(id).expect("the spreadsheet");
    let tab = sheet.tab(tab).expect("the tab");
    (tab.grid_rows, tab.grid_columns)
}

fn strings(row: &[&str]) -> Vec<Value> {
    row.iter().map(|s| Value::from(*s)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_append_goes_after_the_data_and_grows_the_grid_as_google_does() {
    let fake = FakeSheets::start().await;
    let client = Client::new(&fake);
    let id = fake.create_spreadsheet("values");
    // A tab of 1 row x 3 columns, as the exporter adds one.
    client.api.add_tab(&id, "t", 3).await.expect("a tab");

    // OVERWRITE: the grid's one row is filled, then one row is added for the second.
    let landed = client
        .api
        .append_values(&id, "t", &[strings(&["a", "1"]), strings(&["b", "2"])])
        .await
        .expect("appended");
    assert_eq!(
        landed,
        Appended {
            first_row: 1,
            rows: 2
        }
    );
    assert_eq!(grid(&fake, &id, "t"), (2, 3));

    // Another writer's row: the next append goes below it.
    fake.append_row(&id, "t", strings(&["typed"]));
    let landed = client
        .api
        .append_values(&id, "t", &[strings(&["c", "3"])])
        .await
        .expect("appended");
    assert_eq!(landed.first_row, 4, "after the last row with data");

    // INSERT_ROWS adds a row per row even where the grid has empty ones: not what the exporter
    // counts (a tab of 1000 empty rows keeps 1000 with OVERWRITE).
    fake.add_tab(&id, "big");
    client
        .api
        .append_values(&id, "big", &vec![strings(&["x"]); 5])
        .await
        .expect("appended");
    assert_eq!(
        grid(&fake, &id, "big").0,
        1000,
        "OVERWRITE fills empty rows"
    );
    let (status, answer) = client
        .append(
            &id,
            "big",
            "valueInputOption=RAW&insertDataOption=INSERT_ROWS",
            json!([["y"], ["y"]]),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["updates"]["updatedRange"], "big!A6:A7");
    assert_eq!(grid(&fake, &id, "big").0, 1002, "INSERT_ROWS adds rows");

    // valueInputOption is required.
    let (status, answer) = client.append(&id, "t", "", json!([["z"]])).await;
    assert_eq!(status, 400);
    assert!(
        answer["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("valueInputOption")),
        "{answer}"
    );
    assert_eq!(fake.rows(&id, "t").len(), 4, "nothing applied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_values_are_stored_and_read_back_as_sent_and_user_entered_ones_are_parsed() {
    let fake = FakeSheets::start().await;
    let client = Client::new(&fake);
    let id = fake.create_spreadsheet("values");
    fake.add_tab(&id, "t");
    let formula = "=IMPORTXML(\"https://example.com\",\"//a\")";
    client
        .api
        .append_values(
            &id,
            "t",
            &[vec![
                Value::from(formula),
                Value::from("0042"),
                Value::from(7),
                Value::from(true),
            ]],
        )
        .await
        .expect("appended");
    let (status, _) = client
        .append(
            &id,
            "t",
            "valueInputOption=USER_ENTERED",
            json!([[formula, "0042"]]),
        )
        .await;
    assert_eq!(status, 200);
    let rows = fake.rows(&id, "t");
    assert_eq!(
        rows[0],
        vec![
            Value::from(formula),
            Value::from("0042"),
            Value::from(7),
            Value::from(true)
        ]
    );
    assert_eq!(
        rows[1][0],
        json!({"formulaValue": formula}),
        "USER_ENTERED: a formula"
    );
    assert_eq!(rows[1][1], json!(42.0), "USER_ENTERED: a number");

    // The read-back the exporter makes returns the RAW cells as entered.
    let (_, cells) = client
        .api
        .tabs_and_cells(&id, "t", &["A:B"])
        .await
        .expect("read")
        .expect("the tab");
    assert_eq!(cells[0][0], vec![Value::from(formula), Value::from("0042")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_append_over_the_fakes_limits_is_refused_and_faults_apply_to_it() {
    let fake = FakeSheets::start().await;
    let client = Client::new(&fake);
    let id = fake.create_spreadsheet("values");
    // Sheet1 is 1000 x 26; the tab adds 1 x 2.
    client.api.add_tab(&id, "t", 2).await.expect("a tab");
    let cells = fake.spreadsheet(&id).expect("it").cells();

    // Past the cell limit: Google's message, which the exporter reads as "roll over".
    fake.set_cell_limit(cells + 2 * 2);
    let refused = client
        .api
        .append_values(&id, "t", &vec![strings(&["a", "1"]); 4])
        .await
        .expect_err("over the cell limit");
    assert!(refused.is_cell_limit(), "{refused}");
    assert!(fake.rows(&id, "t").is_empty(), "nothing applied");
    client
        .api
        .append_values(&id, "t", &vec![strings(&["a", "1"]); 3])
        .await
        .expect("within the limit");

    // Wider than the grid: refused (the exporter widens the grid first, by batchUpdate).
    fake.set_cell_limit(10_000_000);
    let refused = client
        .api
        .append_values(&id, "t", &[strings(&["a", "1", "wide"])])
        .await
        .expect_err("wider than the grid");
    assert!(refused.is_grid_limit(), "{refused}");

    // A cell over 50,000 characters.
    let long = "x".repeat(50_001);
    let refused = client
        .api
        .append_values(&id, "t", &[vec![Value::from(long)]])
        .await
        .expect_err("a cell too long");
    assert!(
        matches!(&refused, ApiError::Rejected { status: 400, detail } if detail.contains("50000 characters")),
        "{refused}"
    );
    assert_eq!(fake.rows(&id, "t").len(), 3, "nothing applied");

    // Applied, then answered 503: ambiguous to the exporter, and the rows are there.
    let writes = fake.write_requests();
    fake.fail_next_writes(1, Fault::FailAfter(503));
    let lost = client
        .api
        .append_values(&id, "t", &[strings(&["b", "2"])])
        .await
        .expect_err("a 503");
    assert!(lost.is_ambiguous(), "{lost}");
    assert_eq!(fake.rows(&id, "t").len(), 4, "applied all the same");
    assert_eq!(fake.write_requests() - writes, 1, "counted as a write");
    assert_eq!(fake.value_appends(), 4 + 1, "every values.append counted");
}
