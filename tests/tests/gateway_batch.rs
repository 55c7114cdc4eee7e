//! The batch endpoint publishes its valid items together and awaits their acknowledgements
//! together; these tests prove that each item is still answered for its own record (docs/design.md,
//! promises 1 and 7), against the real broker.
//!
//! Invariant proved here: an item answered 202 is on the topic exactly at the partition and offset
//! it was told, items of one form keep their batch order, and an item Kafka did not take is
//! answered 503 on its own, is not on the topic, and can be retried with the same response id.

use std::collections::{HashMap, HashSet};

use formstream_tests::*;
use reqwest::Method;
use serde_json::{Value, json};

/// A response id a client might generate.
fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A valid batch item to `form_id` with a client-supplied response id.
fn item(form_id: &str, response_id: &str, name: &str) -> Value {
    let mut body = valid_response(name);
    body["form_id"] = json!(form_id);
    body["response_id"] = json!(response_id);
    body
}

fn results(result: &Value) -> &Vec<Value> {
    result["results"].as_array().expect("results")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_acknowledged_together_reports_each_items_own_partition_and_offset() {
    let app = spawn_app().await;
    let mut forms = Vec::new();
    for _ in 0..4 {
        forms.push(app.create_typical_form().await);
    }
    // Accepted before the batch; the batch repeats it.
    let earlier_id = new_id();
    let earlier = item(&forms[0], &earlier_id, "Earlier");
    let mut single = earlier.clone();
    single.as_object_mut().expect("an object").remove("form_id");
    let (status, first) = app.submit(&forms[0], &single).await;
    assert_eq!(status, 202, "{first}");

    const ITEMS: usize = 120;
    const INVALID: usize = 7;
    const REPEAT: usize = 50;
    let mut items = Vec::new();
    let mut ids = Vec::new();
    for index in 0..ITEMS {
        let form = &forms[index % forms.len()];
        let id = new_id();
        let body = match index {
            INVALID => json!({"form_id": form, "response_id": id,
                              "collector": {"id": "c1"}, "answers": {"name": "Bad", "income": "lots"}}),
            REPEAT => earlier.clone(),
            _ => item(form, &id, &format!("Item {index}")),
        };
        ids.push(if index == REPEAT {
            earlier_id.clone()
        } else {
            id
        });
        items.push(body);
    }
    let (status, result) = send_json(
        app.acme(Method::POST, "/v1/responses/batch")
            .json(&json!({ "items": items })),
    )
    .await;
    assert_eq!(status, 207, "{result}");
    assert_eq!(result["accepted"], ITEMS - 1, "{result}");
    assert_eq!(result["rejected"], 1, "{result}");
    let results = results(&result);
    assert_eq!(results.len(), ITEMS);
    for (index, r) in results.iter().enumerate() {
        assert_eq!(r["index"], index, "results are in item order: {r}");
        let expected = if index == INVALID { 422 } else { 202 };
        assert_eq!(r["status"], expected, "item {index}: {r}");
    }
    assert_eq!(
        field_problems(&results[INVALID]["problem"]),
        pairs(&[(&format!("/items/{INVALID}/answers/income"), "not_a_number")])
    );
    let repeat = &results[REPEAT];
    assert_eq!(repeat["duplicate"], true, "{repeat}");
    assert_eq!(repeat["response_id"], earlier_id.as_str());
    assert_eq!(
        (&repeat["partition"], &repeat["offset"]),
        (&first["partition"], &first["offset"]),
        "a repeat is answered with the first acceptance's record"
    );

    // The earlier single POST plus every fresh valid item; nothing else.
    let fresh = ITEMS - 2;
    let landed = app.responses_on_topic(1 + fresh).await;
    assert_eq!(landed.len(), 1 + fresh, "{landed:#?}");
    let at: HashMap<(i64, i64), &Landed> = landed
        .iter()
        .map(|r| ((i64::from(r.partition), r.offset), r))
        .collect();
    let mut told = HashSet::new();
    // Per form, the offsets the batch's items were told, in item order.
    let mut per_form: HashMap<&str, Vec<i64>> = HashMap::new();
    for (index, r) in results.iter().enumerate() {
        if index == INVALID || index == REPEAT {
            continue;
        }
        assert_eq!(r["duplicate"], false, "{r}");
        let place = (
            r["partition"].as_i64().expect("partition"),
            r["offset"].as_i64().expect("offset"),
        );
        assert!(told.insert(place), "item {index} shares {place:?}");
        let record = at
            .get(&place)
            .unwrap_or_else(|| panic!("item {index} is on the topic at {place:?}: {r}"));
        let form = forms[index % forms.len()].as_str();
        assert_eq!(record.response.response_id, ids[index], "item {index}");
        assert_eq!(
            record.headers.get("response_id").map(String::as_str),
            Some(ids[index].as_str())
        );
        assert_eq!(record.key.as_deref(), Some(form));
        assert_eq!(record.response.form_id, form);
        assert_eq!(
            record.response.answer("name").and_then(|a| a.text.clone()),
            Some(format!("Item {index}"))
        );
        per_form.entry(form).or_default().push(place.1);
    }
    for (form, offsets) in per_form {
        assert!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "the items of form {form} landed in batch order: {offsets:?}"
        );
    }

    app.finish().await;
}

/// librdkafka's queue is limited to a few records, so a batch overflows it part-way: the items
/// Kafka took are acknowledged, and the rest are refused at once, each on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_kafka_could_not_take_get_503_on_their_own_and_can_be_retried() {
    let app = spawn_gateway(
        GatewayOptions::default()
            .arg("-X", "queue.buffering.max.messages=5")
            .arg("--linger-ms", 50),
    )
    .await;
    let form = app.create_typical_form().await;

    const ITEMS: usize = 20;
    let ids: Vec<String> = (0..ITEMS).map(|_| new_id()).collect();
    let items: Vec<Value> = ids
        .iter()
        .enumerate()
        .map(|(index, id)| item(&form, id, &format!("Item {index}")))
        .collect();
    let (status, result) = send_json(
        app.acme(Method::POST, "/v1/responses/batch")
            .json(&json!({ "items": items })),
    )
    .await;
    assert_eq!(status, 207, "{result}");
    let results = results(&result);
    let accepted: Vec<usize> = (0..ITEMS)
        .filter(|&i| results[i]["status"] == 202)
        .collect();
    let refused: Vec<usize> = (0..ITEMS)
        .filter(|&i| results[i]["status"] == 503)
        .collect();
    assert_eq!(
        accepted.len() + refused.len(),
        ITEMS,
        "every item is acknowledged or refused: {result}"
    );
    assert!(!accepted.is_empty(), "the queue took some: {result}");
    assert!(!refused.is_empty(), "the queue overflowed: {result}");
    assert_eq!(result["accepted"], accepted.len());
    for &index in &refused {
        let problem = &results[index]["problem"];
        assert_eq!(problem["status"], 503, "{problem}");
        assert!(
            results[index].get("partition").is_none(),
            "a refused item names no record: {}",
            results[index]
        );
    }

    // Exactly the acknowledged items are on the topic, where they were told.
    let landed = app.responses_on_topic(accepted.len()).await;
    assert_eq!(landed.len(), accepted.len(), "{landed:#?}");
    for &index in &accepted {
        let r = &results[index];
        let record = landed
            .iter()
            .find(|l| l.response.response_id == ids[index])
            .unwrap_or_else(|| panic!("item {index} is on the topic: {r}"));
        assert_eq!(
            i64::from(record.partition),
            r["partition"].as_i64().expect("partition")
        );
        assert_eq!(record.offset, r["offset"].as_i64().expect("offset"));
    }

    // A refused item's id was released: its retry is published, not a conflict or a duplicate.
    // An acknowledged item's retry is a duplicate.
    let single = |index: usize| {
        let mut body = items[index].clone();
        body.as_object_mut().expect("an object").remove("form_id");
        body
    };
    let (status, retried) = app.submit(&form, &single(refused[0])).await;
    assert_eq!(status, 202, "{retried}");
    assert_eq!(retried["duplicate"], false, "{retried}");
    assert_eq!(retried["response_id"], ids[refused[0]].as_str());
    let (status, repeated) = app.submit(&form, &single(accepted[0])).await;
    assert_eq!(status, 202, "{repeated}");
    assert_eq!(repeated["duplicate"], true, "{repeated}");
    assert_eq!(repeated["offset"], results[accepted[0]]["offset"]);

    let landed = app.responses_on_topic(accepted.len() + 1).await;
    assert!(
        landed
            .iter()
            .any(|l| l.response.response_id == ids[refused[0]]
                && i64::from(l.partition) == retried["partition"].as_i64().unwrap_or(-1)
                && l.offset == retried["offset"].as_i64().unwrap_or(-1)),
        "the retry is on the topic where it was told"
    );

    app.finish().await;
}
