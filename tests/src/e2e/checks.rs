//! The scenario's checks: the truth read from the topics (Avro decoded) and from the fakes,
//! compared with what the gateway acknowledged and what the workload planned.
//!
//! Invariant: a check passes only when every figure it prints is as promised (nothing lost,
//! nothing doubled, nothing stale, nothing unexpected); each check says what it counted, so a
//! miss can be read from the report alone.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use anyhow::Context;
use formstream_schemas::{Codec, FlagStatus, Response, ResponseFlag};
use serde::Serialize;
use serde_json::Value;

use super::load::Ledger;
use super::workload::{Planned, Poison, TEXT_QUESTIONS, WORDS, Workload};
use crate::poll_until;
use crate::standalone::{Message, SheetRow};

/// One check's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    /// What was counted, e.g. "expected 19,980, found 19,980, missing 0, doubled 0".
    pub figures: String,
}

impl Check {
    fn new(name: &str, passed: bool, figures: String) -> Self {
        Check {
            name: name.to_owned(),
            passed,
            figures,
        }
    }
}

/// Where the truth is.
pub struct Sources<'a> {
    pub bootstrap: &'a str,
    pub responses_topic: &'a str,
    pub flags_topic: &'a str,
    /// (processor, dead-letter topic).
    pub dead_letter_topics: &'a [(String, String)],
    pub messages: &'a [Message],
    pub rows: &'a [SheetRow],
    /// Base URL of the slang search API, and an API key of the forms' organisation.
    pub slang: &'a str,
    /// Base URL of the gateway, whose `/v1/dead-letters` is the operator's list.
    pub gateway: &'a str,
    pub api_key: &'a str,
}

const READ_DEADLINE: Duration = Duration::from_secs(600);

/// The latest acknowledged revision of each acknowledged response.
fn latest(workload: &Workload, ledger: &Ledger) -> Vec<Option<i32>> {
    (0..workload.responses)
        .map(|i| {
            if ledger.is_acked(i, 1) {
                Some(1)
            } else if ledger.is_acked(i, 0) {
                Some(0)
            } else {
                None
            }
        })
        .collect()
}

fn count_figures(expected: usize, found: usize, missing: usize, doubled: usize) -> String {
    format!("expected {expected}, found {found}, missing {missing}, doubled {doubled}")
}

/// Runs every check.
pub async fn run(
    workload: &Workload,
    ledger: &Ledger,
    sources: &Sources<'_>,
) -> anyhow::Result<Vec<Check>> {
    let ids: HashMap<String, usize> = (0..workload.responses)
        .map(|i| (workload.response(i).response_id, i))
        .collect();
    let latest = latest(workload, ledger);
    let mut checks = Vec::new();
    let codec = Codec::single_object();

    // 1. Every acknowledged (response, revision) is on the responses topic.
    let acked_total: usize = (0..workload.responses)
        .map(|i| usize::from(ledger.is_acked(i, 0)) + usize::from(ledger.is_acked(i, 1)))
        .sum();
    let records = crate::read_topic(
        sources.bootstrap,
        sources.responses_topic,
        acked_total,
        READ_DEADLINE,
    )
    .await?;
    let mut on_topic: HashSet<(String, i32)> = HashSet::new();
    let mut copies = 0usize;
    for record in &records {
        let response: Response = codec
            .decode(&record.payload)
            .await
            .with_context(|| format!("decoding {}@{}", record.partition, record.offset))?;
        if !on_topic.insert((response.response_id, response.revision)) {
            copies += 1;
        }
    }
    let missing = (0..workload.responses)
        .flat_map(|i| [(i, 0), (i, 1)])
        .filter(|&(i, rev)| ledger.is_acked(i, rev))
        .filter(|&(i, rev)| !on_topic.contains(&(workload.response(i).response_id, rev)))
        .count();
    checks.push(Check::new(
        "every response answered 2xx is on the topic",
        missing == 0,
        format!(
            "acknowledged {acked_total} (response, revision) pairs; {} records on the topic, {} distinct; missing {missing}; published twice by gateway retries {copies}",
            records.len(),
            on_topic.len()
        ),
    ));
    drop(records);

    // 2. Exactly one receipt per response with a phone (none for poison records).
    let messages = Messages::classify(workload, sources.messages)?;
    checks.push(receipts(workload, &latest, &messages));

    // 3. Exactly one sheet row per response, holding its latest revision.
    let mut rows_of: HashMap<usize, Vec<&SheetRow>> = HashMap::new();
    let mut strangers = 0usize;
    for row in sources.rows {
        match row.response_id.as_str().and_then(|id| ids.get(id)) {
            Some(&i) => rows_of.entry(i).or_default().push(row),
            None => strangers += 1,
        }
    }
    let (mut expected, mut found, mut missing, mut doubled, mut stale) = (0, 0, 0, 0, 0);
    for (i, latest) in latest.iter().enumerate() {
        let Some(latest) = latest else { continue };
        expected += 1;
        let rows = rows_of.get(&i).map_or(&[][..], Vec::as_slice);
        found += usize::from(!rows.is_empty());
        missing += usize::from(rows.is_empty());
        doubled += usize::from(rows.len() > 1);
        stale += rows
            .iter()
            .filter(|r| cell_number(&r.revision) != Some(f64::from(*latest)))
            .count();
    }
    checks.push(Check::new(
        "exactly one sheet row per response, holding its latest revision",
        missing == 0 && doubled == 0 && stale == 0 && strangers == 0,
        format!(
            "{}; rows with an older revision {stale}; rows of no such response {strangers}; {} rows in all",
            count_figures(expected, found, missing, doubled),
            sources.rows.len()
        ),
    ));

    // 4. Exactly one committed flag outcome per (response, revision); one notification per
    // flagged one.
    let flags = crate::read_topic(
        sources.bootstrap,
        sources.flags_topic,
        acked_total,
        READ_DEADLINE,
    )
    .await?;
    let mut outcomes: HashMap<(String, i32), Vec<FlagStatus>> = HashMap::new();
    for record in &flags {
        let flag: ResponseFlag = codec
            .decode(&record.payload)
            .await
            .with_context(|| format!("decoding flag {}@{}", record.partition, record.offset))?;
        outcomes
            .entry((flag.response_id, flag.revision))
            .or_default()
            .push(flag.status);
    }
    let (mut expected, mut found, mut missing, mut doubled, mut wrong) = (0, 0, 0, 0, 0);
    let (mut flagged, mut notified, mut not_notified, mut notified_twice) = (0, 0, 0, 0);
    let (mut notice_wrong_number, mut notice_wrong_reference) = (0, 0);
    let mut wanted_notices = HashSet::new();
    for i in 0..workload.responses {
        for revision in [0, 1] {
            if !ledger.is_acked(i, revision) {
                continue;
            }
            let p = workload.response(i);
            expected += 1;
            let statuses = outcomes
                .get(&(p.response_id.clone(), revision))
                .map_or(&[][..], Vec::as_slice);
            found += usize::from(!statuses.is_empty());
            missing += usize::from(statuses.is_empty());
            doubled += usize::from(statuses.len() > 1);
            let want = if p.flagged_at(revision) {
                FlagStatus::Flagged
            } else {
                FlagStatus::Clean
            };
            wrong += statuses.iter().filter(|s| **s != want).count();
            if p.flagged_at(revision) {
                flagged += 1;
                let reference = format!(
                    "{}R{revision}",
                    formstream_notify::reference::short("FS", &identity(workload, &p))
                );
                let sent = messages
                    .notices_of
                    .get(&(p.response_id.as_str(), revision))
                    .map_or(&[][..], Vec::as_slice);
                notified += usize::from(!sent.is_empty());
                not_notified += usize::from(sent.is_empty());
                notified_twice += usize::from(sent.len() > 1);
                notice_wrong_number += sent
                    .iter()
                    .filter(|(m, _)| m.to != p.collector_phone)
                    .count();
                notice_wrong_reference += sent.iter().filter(|(_, r)| *r != reference).count();
                wanted_notices.insert((p.response_id.clone(), revision));
            }
        }
    }
    let stray_notices: usize = messages
        .notices_of
        .iter()
        .filter(|((id, revision), _)| !wanted_notices.contains(&((*id).to_owned(), *revision)))
        .map(|(_, ms)| ms.len())
        .sum();
    checks.push(Check::new(
        "exactly one committed flag outcome per (response, revision)",
        missing == 0 && doubled == 0 && wrong == 0,
        format!(
            "{}; with the wrong status {wrong}; {} committed outcomes read",
            count_figures(expected, found, missing, doubled),
            flags.len()
        ),
    ));
    checks.push(Check::new(
        "one collector notification per flagged (response, revision)",
        not_notified == 0
            && notified_twice == 0
            && stray_notices == 0
            && notice_wrong_number == 0
            && notice_wrong_reference == 0,
        format!(
            "{}; to a wrong number {notice_wrong_number}; with a wrong reference {notice_wrong_reference}; notifications of nothing flagged {stray_notices}",
            count_figures(flagged, notified, not_notified, notified_twice)
        ),
    ));
    drop(flags);

    // 5. Slang counts equal the answers.
    checks.push(slang(workload, &latest, sources).await?);

    // 6. Every poison record in its processor's dead-letter topic with a reason, nothing else.
    // The acknowledged poison records: dead letters, each once in the operator's list.
    let poison: HashSet<usize> = (0..workload.responses)
        .filter(|&i| ledger.is_acked(i, 0) && workload.response(i).poison.is_some())
        .collect();
    checks.push(dead_letters(workload, &poison, sources, &ids).await?);
    checks.push(operator_dead_letters(&poison, sources, &ids).await?);
    Ok(checks)
}

fn cell_number(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// Per form and text question: answers per city, and for the hottest form, answers per city of
/// each word, against the slang search API. The index commits every few seconds: the check asks
/// again until it matches or a minute has passed.
async fn slang(
    workload: &Workload,
    latest: &[Option<i32>],
    sources: &Sources<'_>,
) -> anyhow::Result<Check> {
    // (form, question) -> city -> answers; (form 0, question, word) -> city -> answers.
    let mut per_city: BTreeMap<(usize, &str), BTreeMap<String, u64>> = BTreeMap::new();
    let mut per_word: BTreeMap<(&str, &str), BTreeMap<String, u64>> = BTreeMap::new();
    for (i, latest) in latest.iter().enumerate() {
        let Some(revision) = *latest else { continue };
        let p = workload.response(i);
        for question in TEXT_QUESTIONS {
            let Some(text) = p.text(revision, question) else {
                continue;
            };
            *per_city
                .entry((p.form, question))
                .or_default()
                .entry(p.city.to_owned())
                .or_default() += 1;
            if p.form == 0 {
                let words: HashSet<&str> = text.split(' ').collect();
                for word in WORDS.iter().take(8) {
                    if words.contains(word) {
                        *per_word
                            .entry((question, word))
                            .or_default()
                            .entry(p.city.to_owned())
                            .or_default() += 1;
                    }
                }
            }
        }
    }
    let client = reqwest::Client::new();
    let get = |path: String| {
        let client = client.clone();
        let url = format!("{}{path}", sources.slang);
        let key = sources.api_key.to_owned();
        async move {
            let response = client.get(&url).bearer_auth(key).send().await?;
            anyhow::ensure!(
                response.status().is_success(),
                "GET {url}: {}",
                response.status()
            );
            Ok::<Value, anyhow::Error>(response.json().await?)
        }
    };
    let (get, per_city, per_word) = (&get, &per_city, &per_word);
    let attempt = || async move {
        let mut mismatches = Vec::new();
        for ((form, question), expected) in per_city {
            let body = get(format!(
                "/v1/forms/{}/slang/{question}/words?cities=100&limit=1",
                workload.form_id(*form)
            ))
            .await?;
            let found = answers_per_city(&body);
            if &found != expected {
                mismatches.push(format!(
                    "form {form} {question}: expected {expected:?}, found {found:?}"
                ));
            }
        }
        for ((question, word), expected) in per_word {
            let body = get(format!(
                "/v1/forms/{}/slang/{question}/cities?word={word}&limit=100",
                workload.form_id(0)
            ))
            .await?;
            let found = answers_per_city(&body);
            if &found != expected {
                mismatches.push(format!(
                    "form 0 {question} word {word}: expected {expected:?}, found {found:?}"
                ));
            }
        }
        anyhow::Ok(mismatches)
    };
    let mismatches = poll_until(
        Duration::from_secs(60),
        Duration::from_secs(2),
        attempt,
        Vec::is_empty,
    )
    .await?;
    let answers: u64 = per_city.values().flat_map(|c| c.values()).sum();
    Ok(Check::new(
        "slang counts equal the answers",
        mismatches.is_empty(),
        format!(
            "{} (form, question) pairs holding {answers} answers, per city; {} (word, question) pairs of the hottest form, per city; mismatches {}{}",
            per_city.len(),
            per_word.len(),
            mismatches.len(),
            mismatches
                .first()
                .map(|m| format!(" (first: {m})"))
                .unwrap_or_default()
        ),
    ))
}

/// The slang API's `cities` of an answer: each city's name and its count of answers.
fn answers_per_city(body: &Value) -> BTreeMap<String, u64> {
    body["cities"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            (
                c["city"].as_str().unwrap_or_default().to_owned(),
                c["answers"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

async fn dead_letters(
    workload: &Workload,
    poison: &HashSet<usize>,
    sources: &Sources<'_>,
    ids: &HashMap<String, usize>,
) -> anyhow::Result<Check> {
    let codec = Codec::single_object();
    let mut figures = Vec::new();
    let (mut found, mut without_reason, mut unexpected) = (HashSet::new(), 0usize, 0usize);
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut copies = 0usize;
    for (processor, topic) in sources.dead_letter_topics {
        let records =
            crate::read_topic(sources.bootstrap, topic, 0, Duration::from_secs(60)).await?;
        figures.push(format!("{processor} {}", records.len()));
        for record in &records {
            let reason = record
                .headers
                .get("formstream.dlq.error.message")
                .cloned()
                .unwrap_or_default();
            if reason.trim().is_empty() {
                without_reason += 1;
            }
            let index = if processor == "receipts" {
                codec
                    .decode::<Response>(&record.payload)
                    .await
                    .ok()
                    .and_then(|r| ids.get(&r.response_id).copied())
            } else {
                None
            };
            match index {
                Some(i) if poison.contains(&i) => {
                    let kind = match workload.response(i).poison {
                        Some(Poison::RefusedNumber) => "refused number",
                        _ => "failing template",
                    };
                    let twilio_code = if reason.contains("21211") {
                        ", Twilio 21211"
                    } else {
                        ""
                    };
                    let rendered = if reason.contains("cannot render") {
                        ", cannot render"
                    } else {
                        ""
                    };
                    *reasons
                        .entry(format!("{kind}{twilio_code}{rendered}"))
                        .or_default() += 1;
                    if !found.insert(i) {
                        copies += 1;
                    }
                }
                _ => unexpected += 1,
            }
        }
    }
    let missing = poison.difference(&found).count();
    Ok(Check::new(
        "every poison record is in its processor's dead-letter topic with a reason, and nothing else is there",
        missing == 0 && unexpected == 0 && without_reason == 0,
        format!(
            "poison records acknowledged {}, dead-lettered {}, missing {missing}; other dead letters {unexpected}; without a reason {without_reason}; dead-lettered twice (a crash before the commit) {copies}; by topic: {}; reasons: {reasons:?}",
            poison.len(),
            found.len(),
            figures.join(", ")
        ),
    ))
}

/// What the operator sees: every processor's dead letters as the gateway lists them
/// (`/v1/dead-letters/{processor}?status=all`, the list behind `formstream dlq list` and the
/// console), page by page. A processor killed between writing a dead letter and committing its
/// source offset writes it again; the list must still show each poison record exactly once.
async fn operator_dead_letters(
    poison: &HashSet<usize>,
    sources: &Sources<'_>,
    ids: &HashMap<String, usize>,
) -> anyhow::Result<Check> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let mut listed: HashMap<usize, usize> = HashMap::new();
    let (mut others, mut figures) = (0usize, Vec::new());
    for (processor, _) in sources.dead_letter_topics {
        let mut after: Option<String> = None;
        let mut count = 0usize;
        loop {
            let mut url =
                reqwest::Url::parse(&format!("{}/v1/dead-letters/{processor}", sources.gateway))?;
            url.query_pairs_mut()
                .append_pair("status", "all")
                .append_pair("limit", "500");
            if let Some(after) = &after {
                url.query_pairs_mut().append_pair("after", after);
            }
            let response = client.get(url).bearer_auth(sources.api_key).send().await?;
            anyhow::ensure!(
                response.status().is_success(),
                "listing {processor}'s dead letters: {}",
                response.status()
            );
            let page: Value = response.json().await?;
            for item in page["items"].as_array().into_iter().flatten() {
                count += 1;
                let index = item["record"]["response_id"]
                    .as_str()
                    .and_then(|id| ids.get(id).copied());
                match index {
                    Some(i) if poison.contains(&i) && processor == "receipts" => {
                        *listed.entry(i).or_default() += 1;
                    }
                    _ => others += 1,
                }
            }
            match page["next_cursor"].as_str() {
                Some(next) => after = Some(next.to_owned()),
                None => break,
            }
        }
        figures.push(format!("{processor} {count}"));
    }
    let missing = poison.iter().filter(|i| !listed.contains_key(i)).count();
    let twice = listed.values().filter(|n| **n > 1).count();
    Ok(Check::new(
        "the operator's dead-letter list shows each poison record once",
        missing == 0 && twice == 0 && others == 0,
        format!(
            "poison records {}, listed {}, missing {missing}, listed more than once {twice}; other dead letters listed {others}; listed per processor: {}",
            poison.len(),
            listed.len(),
            figures.join(", ")
        ),
    ))
}

/// The SMS the Twilio fake received, each matched to its response by what only that response's
/// message holds: the respondent's name in a receipt, the response id and revision in a collector
/// notification. Not by the reference: a reference is 40 bits of a hash, and at ~800k receipts
/// two responses share one with odds of about 30 %. Each message's reference is kept, to be checked
/// against the one its response must carry.
struct Messages<'m> {
    /// Receipts by planned response index, with their references.
    receipts_of: HashMap<usize, Vec<(&'m Message, &'m str)>>,
    /// Notifications by (response id, flagged revision), with their references.
    notices_of: HashMap<(&'m str, i32), Vec<(&'m Message, &'m str)>>,
    /// Receipts naming a respondent the workload does not have.
    stray_receipts: usize,
    /// Messages that are neither a receipt nor a notification.
    unclassified: usize,
}

impl<'m> Messages<'m> {
    fn classify(workload: &Workload, messages: &'m [Message]) -> anyhow::Result<Self> {
        let receipt_of = regex::Regex::new(
            r"Thank you Respondent ([0-9]+) for taking part .* Ref (RC[0-9A-F]{10})\b",
        )?;
        let notice_of = regex::Regex::new(
            r#"^Response (\S+) \(.*?, rev ([0-9]+)\) flagged: .* Ref (FS[0-9A-F]{10}R[0-9]+)\b"#,
        )?;
        let mut receipts_of: HashMap<usize, Vec<(&Message, &str)>> = HashMap::new();
        let mut notices_of: HashMap<(&str, i32), Vec<(&Message, &str)>> = HashMap::new();
        let (mut unclassified, mut stray_receipts) = (0usize, 0usize);
        for message in messages {
            if let Some(c) = receipt_of.captures(&message.body) {
                match c[1].parse::<usize>() {
                    Ok(i) if i < workload.responses => receipts_of
                        .entry(i)
                        .or_default()
                        .push((message, c.get(2).map_or("", |m| m.as_str()))),
                    _ => stray_receipts += 1,
                }
            } else if let Some(c) = notice_of.captures(&message.body) {
                let (Some(id), Some(reference)) = (c.get(1), c.get(3)) else {
                    unclassified += 1;
                    continue;
                };
                let revision = c[2].parse().unwrap_or(-1);
                notices_of
                    .entry((id.as_str(), revision))
                    .or_default()
                    .push((message, reference.as_str()));
            } else {
                unclassified += 1;
            }
        }
        Ok(Messages {
            receipts_of,
            notices_of,
            stray_receipts,
            unclassified,
        })
    }
}

/// Exactly one receipt per response with a phone (none for poison ones), to its phone, with its
/// reference.
fn receipts(workload: &Workload, latest: &[Option<i32>], messages: &Messages<'_>) -> Check {
    let (mut expected, mut found, mut missing, mut doubled) = (0, 0, 0, 0);
    let (mut wrong_number, mut wrong_reference) = (0, 0);
    let mut wanted = HashSet::new();
    for (i, latest) in latest.iter().enumerate() {
        if latest.is_none() {
            continue;
        }
        let p = workload.response(i);
        let Some(phone) = &p.phone else { continue };
        if p.poison.is_some() {
            continue;
        }
        expected += 1;
        wanted.insert(i);
        let reference = formstream_notify::reference::short("RC", &identity(workload, &p));
        let sent = messages.receipts_of.get(&i).map_or(&[][..], Vec::as_slice);
        found += usize::from(!sent.is_empty());
        missing += usize::from(sent.is_empty());
        doubled += usize::from(sent.len() > 1);
        wrong_number += sent.iter().filter(|(m, _)| &m.to != phone).count();
        wrong_reference += sent.iter().filter(|(_, r)| *r != reference).count();
    }
    let unexpected: usize = messages.stray_receipts
        + messages
            .receipts_of
            .iter()
            .filter(|(i, _)| !wanted.contains(*i))
            .map(|(_, ms)| ms.len())
            .sum::<usize>();
    Check::new(
        "exactly one receipt per response with a phone",
        missing == 0
            && doubled == 0
            && unexpected == 0
            && wrong_number == 0
            && wrong_reference == 0,
        format!(
            "{}; to a wrong number {wrong_number}; with a wrong reference {wrong_reference}; receipts for no such response (or a poison one) {unexpected}; messages that are neither receipt nor notification {}",
            count_figures(expected, found, missing, doubled),
            messages.unclassified
        ),
    )
}

/// The identity key of planned response `p` (of the scenario's organisation): what receipt and
/// notification references hash.
fn identity(workload: &Workload, p: &Planned) -> String {
    formstream_core::identity::ResponseKey {
        organisation: super::ORGANISATION,
        form_id: &workload.form_id(p.form),
        response_id: &p.response_id,
    }
    .to_string()
}

#[cfg(test)]
mod tests {
    use formstream_schemas::{FlagStatus, ResponseFlag, TimestampMillis, Violation};

    use super::*;

    /// The receipt the workload's template renders for planned response `i`.
    fn receipt(workload: &Workload, i: usize, reference: &str) -> Message {
        let p = workload.response(i);
        Message {
            sid: format!("SM{i}"),
            to: p.phone.clone().unwrap_or_default(),
            body: format!(
                "Thank you Respondent {i} for taking part in Form {}: 1234 per member a month. Ref {reference}",
                p.form
            ),
            created_ms: 0,
        }
    }

    fn receipts_wanted(workload: &Workload) -> Vec<usize> {
        (0..workload.responses)
            .filter(|&i| {
                let p = workload.response(i);
                p.phone.is_some() && p.poison.is_none()
            })
            .collect()
    }

    fn own_reference(workload: &Workload, i: usize) -> String {
        formstream_notify::reference::short("RC", &identity(workload, &workload.response(i)))
    }

    #[test]
    fn receipts_are_matched_by_respondent_so_a_shared_reference_is_no_double() {
        let workload = Workload::new("checks-test", 7, 3, 200, 1.1);
        let latest = vec![Some(0); workload.responses];
        let wanted = receipts_wanted(&workload);
        let (a, b) = (wanted[0], wanted[1]);
        let mut sent: Vec<Message> = wanted
            .iter()
            .map(|&i| receipt(&workload, i, &own_reference(&workload, i)))
            .collect();
        let check = |sent: &[Message]| {
            let messages = Messages::classify(&workload, sent).unwrap();
            receipts(&workload, &latest, &messages)
        };
        assert!(check(&sent).passed);

        // Two responses whose references collide: what a 40-bit hash does at ~800k receipts,
        // made here by giving b the reference of a. Only the wrong reference is a miss.
        sent[1] = receipt(&workload, b, &own_reference(&workload, a));
        let collided = check(&sent);
        assert!(!collided.passed);
        for figure in ["doubled 0", "with a wrong reference 1"] {
            assert!(collided.figures.contains(figure), "{}", collided.figures);
        }

        // A real double and a receipt to another number are both misses.
        sent[1] = receipt(&workload, b, &own_reference(&workload, b));
        sent.push(receipt(&workload, a, &own_reference(&workload, a)));
        let mut other = receipt(&workload, b, &own_reference(&workload, b));
        other.to = "+919800000000".into();
        sent.push(other);
        let doubled = check(&sent);
        assert!(!doubled.passed);
        for figure in ["doubled 2", "to a wrong number 1"] {
            assert!(doubled.figures.contains(figure), "{}", doubled.figures);
        }
    }

    #[test]
    fn notifications_are_matched_by_response_and_revision_as_the_collector_sms_says() {
        let workload = Workload::new("checks-test", 7, 3, 50, 1.1);
        let p = workload.response(3);
        let flag = ResponseFlag {
            response_id: p.response_id.clone(),
            form_id: workload.form_id(p.form),
            form_version: 1,
            organisation: super::super::ORGANISATION.into(),
            revision: 1,
            collector_id: p.collector_id.clone(),
            collector_phone: Some(p.collector_phone.clone()),
            status: FlagStatus::Flagged,
            violations: vec![Violation {
                rule_id: "savings".into(),
                message: "Savings cannot exceed income, rev 0) flagged: here".into(),
                question_keys: vec!["savings".into()],
                error: None,
            }],
            evaluated_at: TimestampMillis::default(),
        };
        let url = formstream_notify_collectors::message::correction_url("http://gw", &flag);
        let body = formstream_notify_collectors::message::sms_body(&flag, "Form 3", &url);
        let sent = [Message {
            sid: "SM1".into(),
            to: p.collector_phone.clone(),
            body,
            created_ms: 0,
        }];
        let messages = Messages::classify(&workload, &sent).unwrap();
        assert_eq!(messages.unclassified, 0);
        let notices = &messages.notices_of[&(p.response_id.as_str(), 1)];
        assert_eq!(notices.len(), 1);
        assert_eq!(
            notices[0].1,
            formstream_notify_collectors::message::reference(&flag)
        );
    }
}
