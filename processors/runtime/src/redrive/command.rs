//! `formstream dlq list|show|redrive|discard --processor <name>`: a processor's dead letters from
//! the command line, every organisation's (an operator's view).
//!
//! Invariant: a re-drive or a discard names its dead letters explicitly, by `--id` or by `--all`
//! with filters; neither has an environment variable, so a variable left set never widens one.

use clap::{Args, Subcommand};
use formstream_core::config::{KafkaArgs, RegistryArgs};

use crate::dlq::Kind;
use crate::redrive::admin::{Action, AdminError, DeadLetterAdmin, Outcome, Scope, Selection};
use crate::redrive::filter::{parse_kind, parse_time};
use crate::redrive::snapshot::ReadError;
use crate::redrive::{Filter, LetterId};

/// `formstream dlq`.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Print the pending dead letters (neither re-driven nor discarded), oldest first, one JSON
    /// object per line: the record's summary, the error and every header.
    List {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Print one dead letter in full (any state): its decoded value (phone numbers redacted) and
    /// every header.
    Show {
        #[command(flatten)]
        target: Target,
        /// The dead letter's id, `<partition>-<offset>` (as `list` prints it).
        #[arg(long)]
        id: LetterId,
    },
    /// Hand pending dead letters back to their processor (and only to it): each is copied to the
    /// processor's re-drive topic, once, with a re-drive count header.
    Redrive(Change),
    /// Drop pending dead letters: they leave `list` and can no longer be re-driven.
    Discard(Change),
}

/// Whose dead letters: the processor, and how to reach them.
#[derive(Debug, Clone, Args)]
pub struct Target {
    /// The processor whose dead letters these are (as in `formstream process <name>`).
    #[arg(long, env = "FORMSTREAM_DLQ_PROCESSOR")]
    pub processor: String,

    /// Its dead-letter topic; `<processor>.dlq` when unset (the processor's `--dlq-topic`).
    #[arg(long, env = "FORMSTREAM_DLQ_TOPIC")]
    pub dlq_topic: Option<String>,

    #[command(flatten)]
    pub kafka: KafkaArgs,

    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// Conditions on the dead letters; every one given must hold.
#[derive(Debug, Clone, Default, Args)]
pub struct FilterArgs {
    /// Only this error kind: permanent, retries_exhausted, undecodable or unknown_form.
    #[arg(long, env = "FORMSTREAM_DLQ_KIND", value_parser = parse_kind)]
    pub kind: Option<Kind>,

    /// Only records of this organisation.
    #[arg(long, env = "FORMSTREAM_DLQ_ORGANISATION")]
    pub organisation: Option<String>,

    /// Only records of this form id.
    #[arg(long, env = "FORMSTREAM_DLQ_FORM")]
    pub form: Option<String>,

    /// Only records of this response id.
    #[arg(long, env = "FORMSTREAM_DLQ_RESPONSE_ID")]
    pub response_id: Option<String>,

    /// Only dead letters dead-lettered at or after this RFC 3339 time.
    #[arg(long, env = "FORMSTREAM_DLQ_SINCE", value_parser = parse_time)]
    pub since: Option<i64>,

    /// Only dead letters dead-lettered before this RFC 3339 time.
    #[arg(long, env = "FORMSTREAM_DLQ_UNTIL", value_parser = parse_time)]
    pub until: Option<i64>,
}

impl FilterArgs {
    pub fn filter(&self) -> Result<Filter, String> {
        Filter {
            kind: self.kind,
            organisation: self.organisation.clone(),
            form_id: self.form.clone(),
            response_id: self.response_id.clone(),
            since_ms: self.since,
            until_ms: self.until,
        }
        .validated()
        .map_err(|e| format!("--{e}"))
    }
}

/// A re-drive or a discard: which dead letters.
#[derive(Debug, Clone, Args)]
#[command(group = clap::ArgGroup::new("selection").required(true).args(["ids", "all"]))]
pub struct Change {
    #[command(flatten)]
    pub target: Target,

    /// A dead letter's id, `<partition>-<offset>` (repeatable, or comma-separated). No
    /// environment variable: what to change is always explicit.
    #[arg(
        long = "id",
        value_delimiter = ',',
        conflicts_with_all = ["all", "kind", "organisation", "form", "response_id", "since", "until"]
    )]
    pub ids: Vec<LetterId>,

    /// Every pending dead letter that matches the filters (all of them without filters).
    #[arg(long)]
    pub all: bool,

    #[command(flatten)]
    pub filter: FilterArgs,

    /// Print what would be done without doing it.
    #[arg(long)]
    pub dry_run: bool,
}

impl Change {
    /// The dead letters asked for: by id, or every pending one matching the filters.
    fn selection(&self) -> anyhow::Result<Selection> {
        if self.all {
            Ok(Selection::Matching(
                self.filter.filter().map_err(anyhow::Error::msg)?,
            ))
        } else {
            Ok(Selection::Ids(self.ids.clone()))
        }
    }
}

impl DlqCommand {
    /// Runs the command, printing to stdout. `registered` names the processors of this binary,
    /// for the error message of a processor without dead letters.
    pub async fn run(self, registered: &[String]) -> anyhow::Result<()> {
        let target = match &self {
            DlqCommand::List { target, .. } | DlqCommand::Show { target, .. } => target.clone(),
            DlqCommand::Redrive(change) | DlqCommand::Discard(change) => change.target.clone(),
        };
        let dlq_topic = target
            .dlq_topic
            .clone()
            .unwrap_or_else(|| format!("{}.dlq", target.processor));
        let codec = formstream_core::codec(&target.registry)?;
        let admin =
            DeadLetterAdmin::new(target.kafka.clone(), codec, &target.processor, &dlq_topic);
        let explain = |error: AdminError| explain(error, &target, registered);
        match self {
            DlqCommand::List { filter, .. } => {
                let filter = filter.filter().map_err(anyhow::Error::msg)?;
                let letters = admin
                    .list(&Scope::Everything, &filter)
                    .await
                    .map_err(explain)?;
                for letter in &letters {
                    println!("{}", letter.summary_json(&target.processor));
                }
                eprintln!(
                    "{} pending dead letter{} of {} ({dlq_topic}).",
                    letters.len(),
                    if letters.len() == 1 { "" } else { "s" },
                    target.processor
                );
            }
            DlqCommand::Show { id, .. } => {
                let letter = admin.show(&Scope::Everything, id).await.map_err(explain)?;
                println!("{:#}", letter.full_json(&target.processor));
            }
            DlqCommand::Redrive(change) => {
                let selection = change.selection()?;
                change_letters(&admin, Action::Redrive, selection, change.dry_run)
                    .await
                    .map_err(explain)?;
            }
            DlqCommand::Discard(change) => {
                let selection = change.selection()?;
                change_letters(&admin, Action::Discard, selection, change.dry_run)
                    .await
                    .map_err(explain)?;
            }
        }
        Ok(())
    }
}

async fn change_letters(
    admin: &DeadLetterAdmin,
    action: Action,
    selection: Selection,
    dry_run: bool,
) -> Result<(), AdminError> {
    let verb = match action {
        Action::Redrive => "re-drive",
        Action::Discard => "discard",
    };
    if dry_run {
        let chosen: Vec<LetterId> = match &selection {
            Selection::Matching(filter) => admin
                .list(&Scope::Everything, filter)
                .await?
                .iter()
                .map(|letter| letter.id)
                .collect(),
            Selection::Ids(ids) => {
                let mut pending = Vec::new();
                for id in ids {
                    let letter = admin.show(&Scope::Everything, *id).await?;
                    if letter.state.status == crate::redrive::Status::Pending {
                        pending.push(*id);
                    }
                }
                pending
            }
        };
        println!(
            "Dry run; would {verb} {} dead letter{} of {}: {}",
            chosen.len(),
            plural(chosen.len()),
            admin.processor(),
            joined(&chosen)
        );
        return Ok(());
    }
    let by = format!(
        "cli:{}",
        std::env::var("USER").unwrap_or_else(|_| "unknown".to_owned())
    );
    let outcome = match action {
        Action::Redrive => admin.redrive(&Scope::Everything, &selection, &by).await?,
        Action::Discard => admin.discard(&Scope::Everything, &selection, &by).await?,
    };
    print_outcome(admin, &outcome);
    Ok(())
}

fn print_outcome(admin: &DeadLetterAdmin, outcome: &Outcome) {
    let done = match outcome.action {
        Action::Redrive => format!("Re-drove (to {})", admin.topics().redrive),
        Action::Discard => "Discarded".to_owned(),
    };
    println!(
        "{done} {} dead letter{} of {}: {}",
        outcome.done.len(),
        plural(outcome.done.len()),
        admin.processor(),
        joined(&outcome.done)
    );
    for skipped in &outcome.skipped {
        println!(
            "Skipped {}: already {}.",
            skipped.id,
            skipped.status.as_str()
        );
    }
}

fn plural(count: usize) -> &'static str {
    if count == 1 { "" } else { "s" }
}

fn joined(ids: &[LetterId]) -> String {
    if ids.is_empty() {
        return "none".to_owned();
    }
    ids.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The error as an operator needs it: what is wrong, and what to check.
fn explain(error: AdminError, target: &Target, registered: &[String]) -> anyhow::Error {
    match error {
        AdminError::Read(ReadError::NoTopic(topic)) => {
            let hint = if target.dlq_topic.is_none() && !registered.contains(&target.processor) {
                format!(
                    "; {:?} is not a registered processor (one of {})",
                    target.processor,
                    registered.join(", ")
                )
            } else {
                "; check --processor and --dlq-topic, or the processor has never run".to_owned()
            };
            anyhow::anyhow!(
                "no dead letters to show: the dead-letter topic {topic} does not exist{hint}"
            )
        }
        AdminError::NotFound(ids) => anyhow::anyhow!(
            "no dead letter {} in {} (ids are <partition>-<offset>, as `formstream dlq list` prints them)",
            joined(&ids),
            target
                .dlq_topic
                .clone()
                .unwrap_or_else(|| format!("{}.dlq", target.processor))
        ),
        other => anyhow::Error::new(other),
    }
}
