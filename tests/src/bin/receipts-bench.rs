//! The receipts benchmark: receipts per second through the real runtime, the real
//! Twilio client and the effect ledger on the local broker, against the Twilio fake answering
//! every create after a fixed latency, with a configured rate limit. Not a test: run it with
//! `bench/receipts.sh`, which also measures Kafka's own consumer on the same topic.
//!
//! It fills a fresh responses topic with `--records` responses (distinct numbers) to one form with
//! a receipt, runs the receipts processor in-process until the fake holds one message per
//! response, and prints the rate between the first and the last message the fake created (so
//! group join and the ledger's start-up are not counted), then the topic for the perf tool.
//! Invariant checked on the way: exactly one message per number.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use clap::Parser;
use formstream_notify::{RateLimit, SmsSender, TwilioClient};
use formstream_receipts::Receipts;
use formstream_receipts::processor::NAME;
use formstream_runtime::{Ledger, LedgerArgs};
use formstream_schemas::fixtures;
use formstream_schemas::{Question, QuestionType, ReceiptAction, Response};
use formstream_tests::runtime::{
    RuntimeTopics, TestProducer, spawn_runtime, test_form, test_response,
};
use formstream_tests::twilio_fake::FakeTwilio;
use formstream_tests::unique;

#[derive(Parser)]
struct Args {
    /// Responses to send a receipt for.
    #[arg(long, default_value_t = 20_000)]
    records: usize,
    /// The receipts rate limit (segments per second).
    #[arg(long, default_value_t = 500.0)]
    rate: f64,
    /// The fake's answer time for each create.
    #[arg(long, default_value = "100ms", value_parser = formstream_core::config::parse_duration)]
    latency: Duration,
    /// The runtime's --max-in-flight (at least rate x latency to reach the rate).
    #[arg(long, default_value_t = 128)]
    max_in_flight: usize,
    /// Partitions of the responses topic.
    #[arg(long, default_value_t = 12)]
    partitions: i32,
    /// Leave the topics for Kafka's perf tool (bench/receipts.sh deletes them after).
    #[arg(long)]
    keep_topics: bool,
}

/// A distinct valid US number per index (area codes 201-209 except 204, exchange 555).
fn phone(index: usize) -> String {
    const AREAS: [u32; 8] = [201, 202, 203, 205, 206, 207, 208, 209];
    let area = AREAS[(index / 10_000) % AREAS.len()];
    format!("+1{area}555{:04}", index % 10_000)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.records <= 80_000, "at most 80,000 distinct numbers");
    let topics = RuntimeTopics::create(args.partitions).await;
    let producer = TestProducer::new(&topics);
    let mut form = test_form(&format!("bench-{}", unique()));
    let version = &mut form.versions[0];
    version.title = "Household survey".to_owned();
    version.questions.push(Question {
        text: "Mobile".to_owned(),
        required: true,
        ..fixtures::question("phone", QuestionType::Phone)
    });
    version.receipt = Some(ReceiptAction {
        phone_question: "phone".to_owned(),
        template: "Thank you {{ answers.name }} for taking part in {{ form.title }}. Receipt {{ receipt_ref }}".to_owned(),
    });
    producer.form(&form).await;
    let responses: Vec<(i32, Response)> = (0..args.records)
        .map(|i| {
            let mut response = test_response(&form.id, &uuid::Uuid::new_v4().to_string(), 0);
            response
                .answers
                .push(fixtures::text_answer("phone", &phone(i)));
            ((i % args.partitions as usize) as i32, response)
        })
        .collect();
    producer.responses(&responses).await;
    eprintln!(
        "receipts-bench: {} responses on {}",
        args.records, topics.responses
    );

    let twilio = FakeTwilio::start().await;
    twilio.set_latency(args.latency);
    let ledger_args = LedgerArgs {
        ledger_topic: Some(format!("{}-ledger", topics.responses)),
        ledger_partitions: args.partitions,
        ledger_replication_factor: 1,
    };
    let ledger = Ledger::open(&topics.kafka(), &ledger_args, NAME, std::future::pending())
        .await?
        .ok_or_else(|| anyhow::anyhow!("the ledger did not open"))?;
    let rate = RateLimit::per_second(args.rate).ok_or_else(|| anyhow::anyhow!("bad --rate"))?;
    let processor = Receipts::new(
        SmsSender::Twilio(TwilioClient::new(twilio.config())?),
        ledger,
        rate,
    );
    let in_flight = args.max_in_flight.to_string();
    let started = Instant::now();
    let runtime = spawn_runtime(
        processor,
        topics.config(&["--max-in-flight", &in_flight, "--commit-interval", "1s"]),
    )
    .await;
    let deadline = started
        + Duration::from_secs(60)
        + Duration::from_secs_f64(args.records as f64 / args.rate * 3.0);
    while twilio.messages().len() < args.records {
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} of {} receipts by the deadline",
            twilio.messages().len(),
            args.records
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let wall = started.elapsed();
    runtime.stop().await?;

    let messages = twilio.messages();
    let mut per_number: HashMap<&str, usize> = HashMap::new();
    for message in &messages {
        *per_number.entry(message.to.as_str()).or_default() += 1;
    }
    let doubled = per_number.values().filter(|n| **n > 1).count();
    anyhow::ensure!(doubled == 0, "{doubled} numbers got more than one receipt");
    let first = messages.iter().map(|m| m.date_created).min();
    let last = messages.iter().map(|m| m.date_created).max();
    let span = match (first, last) {
        (Some(first), Some(last)) => (last - first).as_seconds_f64(),
        _ => 0.0,
    };
    let measured = (messages.len().saturating_sub(1)) as f64 / span.max(f64::EPSILON);
    println!(
        "receipts={} rate_limit={} latency_ms={} max_in_flight={} first_to_last_s={span:.3} receipts_per_s={measured:.1} of_limit_pct={:.1} wall_s={:.3} topic={}",
        messages.len(),
        args.rate,
        args.latency.as_millis(),
        args.max_in_flight,
        measured / args.rate * 100.0,
        wall.as_secs_f64(),
        topics.responses,
    );
    if !args.keep_topics {
        topics.delete().await;
        formstream_tests::delete_topics(
            &topics.bootstrap,
            &[ledger_args.ledger_topic.as_deref().unwrap_or_default()],
        )
        .await;
    }
    Ok(())
}
