//! How a processor is built from its flags and run: the one construction trait, [`Launch`], and
//! [`Registration`], what the `formstream` binary lists for each processor (one line).
//!
//! Invariant: a processor's name, description, flags, construction and form action live in its
//! own crate (its `impl Launch`); `formstream process <name>` and `formstream dev` run every registered processor
//! through [`Registration`], so adding one touches no other processor and no gateway code.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{ArgMatches, Args, FromArgMatches};
use formstream_core::forms::FormAction;
use futures::future::BoxFuture;
use tokio::sync::watch;

use crate::{Processor, RuntimeConfig};

/// A shutdown signal: completes when the processor should stop.
pub type Shutdown = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// A processor the binary can run: its name, what it does, its flags and how it starts.
pub trait Launch: 'static {
    /// `formstream process <NAME>`; also names its consumer group and dead-letter topic.
    const NAME: &'static str;
    /// One line for `--help`.
    const ABOUT: &'static str;
    /// Its own flags, beside the runtime's (`#[derive(clap::Args)]`; none: an empty struct).
    type Args: Args + Send + 'static;

    /// Builds the processor from its flags and runs it on the runtime until `shutdown`
    /// (usually `formstream_runtime::run(processor, runtime, None, shutdown)`, or
    /// [`open_and_run`] for one that opens something first).
    fn run(
        args: Self::Args,
        runtime: RuntimeConfig,
        shutdown: Shutdown,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// The form action this processor owns, if any (`formstream_core::forms::Action`): the
    /// gateway checks a form's `actions` through every registered processor's.
    fn form_action() -> Option<Arc<dyn FormAction>> {
        None
    }
}

/// Runs the processor `open` builds, for one that must open something asynchronously before it
/// can run (a ledger catching up with its topic) and may be shut down meanwhile (`open` then
/// gives `None`). `open` gets the runtime's configuration and a shutdown signal of its own; it
/// runs while the runtime gets ready ([`crate::run_opening`]), not before.
pub async fn open_and_run<P, F>(
    runtime: RuntimeConfig,
    shutdown: Shutdown,
    open: impl FnOnce(RuntimeConfig, Shutdown) -> F,
) -> anyhow::Result<()>
where
    P: Processor + Launch,
    F: Future<Output = anyhow::Result<Option<P>>>,
{
    // One signal, two listeners: the opening step and the runtime.
    let (stop, stopped) = watch::channel(false);
    let signal = tokio::spawn(async move {
        shutdown.await;
        stop.send_replace(true);
    });
    let listener = |mut stopped: watch::Receiver<bool>| -> Shutdown {
        Box::pin(async move {
            let _ = stopped.wait_for(|s| *s).await;
        })
    };
    let opening = open(runtime.clone(), listener(stopped.clone()));
    let outcome = crate::run_opening(
        P::NAME.to_owned(),
        opening,
        runtime,
        None,
        listener(stopped),
    )
    .await;
    signal.abort();
    outcome
}

/// One processor's flags: the runtime's and its own.
#[derive(Debug, clap::Args)]
struct LaunchArgs<A: Args> {
    #[command(flatten)]
    runtime: RuntimeConfig,
    #[command(flatten)]
    args: A,
}

/// A registered processor, as the binary lists it: `Registration::of::<MyProcessor>()`.
#[derive(Clone, Copy)]
pub struct Registration {
    pub name: &'static str,
    command: fn() -> clap::Command,
    prepare: fn(&ArgMatches) -> Result<Prepared, clap::Error>,
    form_action: fn() -> Option<Arc<dyn FormAction>>,
}

impl Registration {
    pub const fn of<P: Launch>() -> Self {
        Registration {
            name: P::NAME,
            command: command::<P>,
            prepare: prepare::<P>,
            form_action: P::form_action,
        }
    }

    /// The form action the processor owns, if any.
    pub fn form_action(&self) -> Option<Arc<dyn FormAction>> {
        (self.form_action)()
    }

    /// Its subcommand: the runtime's flags and its own.
    pub fn command(&self) -> clap::Command {
        (self.command)()
    }

    /// The processor, configured from `matches` of [`Registration::command`].
    pub fn prepare(&self, matches: &ArgMatches) -> Result<Prepared, clap::Error> {
        (self.prepare)(matches)
    }

    /// The processor with its default flags (and the FORMSTREAM_* environment), as `formstream
    /// dev` runs it. [`Unset`] when a flag it requires has no default and is not set.
    pub fn with_defaults(&self) -> Result<Prepared, Unset> {
        let matches = self
            .command()
            .try_get_matches_from([self.name])
            .map_err(|error| Unset::from_clap(self.name, error))?;
        self.prepare(&matches)
            .map_err(|error| Unset::from_clap(self.name, error))
    }
}

fn command<P: Launch>() -> clap::Command {
    // After the flags: `augment_args` sets the about text to `LaunchArgs`' own doc.
    LaunchArgs::<P::Args>::augment_args(clap::Command::new(P::NAME)).about(P::ABOUT)
}

fn prepare<P: Launch>(matches: &ArgMatches) -> Result<Prepared, clap::Error> {
    let LaunchArgs { runtime, args } = LaunchArgs::<P::Args>::from_arg_matches(matches)?;
    Ok(Prepared {
        name: P::NAME,
        runtime,
        start: Box::new(move |runtime, shutdown| Box::pin(P::run(args, runtime, shutdown))),
    })
}

type Start =
    Box<dyn FnOnce(RuntimeConfig, Shutdown) -> BoxFuture<'static, anyhow::Result<()>> + Send>;

/// A processor configured from its flags, not started yet: its runtime configuration may still
/// be changed (`formstream dev` gives each its metrics port and the gateway's Kafka settings).
pub struct Prepared {
    pub name: &'static str,
    pub runtime: RuntimeConfig,
    start: Start,
}

impl Prepared {
    /// Builds and runs the processor until `shutdown`.
    pub async fn run(self, shutdown: Shutdown) -> anyhow::Result<()> {
        (self.start)(self.runtime, shutdown).await
    }
}

/// Why a processor cannot run on its defaults: a required flag is unset (its credentials, say),
/// or a flag's value (from the environment) is invalid.
#[derive(Debug, thiserror::Error)]
pub enum Unset {
    #[error("processor {processor} needs {} (not set)", .flags.join(", "))]
    Required {
        processor: &'static str,
        flags: Vec<String>,
    },
    #[error("processor {processor}: {error}")]
    Invalid {
        processor: &'static str,
        error: clap::Error,
    },
}

impl Unset {
    fn from_clap(processor: &'static str, error: clap::Error) -> Self {
        if error.kind() != ErrorKind::MissingRequiredArgument {
            return Unset::Invalid { processor, error };
        }
        let flags = match error.get(ContextKind::InvalidArg) {
            Some(ContextValue::Strings(flags)) => flags.clone(),
            Some(ContextValue::String(flag)) => vec![flag.clone()],
            _ => vec!["a required flag".to_owned()],
        };
        Unset::Required { processor, flags }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Needy;

    /// A processor's own flags, one of them required.
    #[derive(Debug, clap::Args)]
    struct NeedyArgs {
        /// A credential with no default.
        #[arg(long, env = "FORMSTREAM_TEST_LAUNCH_NEEDY_TOKEN")]
        needy_token: String,
    }

    impl Launch for Needy {
        const NAME: &'static str = "needy";
        const ABOUT: &'static str = "Needs a token";
        type Args = NeedyArgs;

        async fn run(args: NeedyArgs, _: RuntimeConfig, _: Shutdown) -> anyhow::Result<()> {
            anyhow::ensure!(args.needy_token == "t", "wrong token");
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_registration_parses_its_flags_and_names_a_missing_required_one() {
        let registration = Registration::of::<Needy>();
        let command = registration.command();
        assert_eq!(command.get_name(), "needy");
        assert_eq!(
            command.get_about().map(|a| a.to_string()).as_deref(),
            Some("Needs a token")
        );
        assert!(
            command
                .get_arguments()
                .any(|a| a.get_long() == Some("group-id"))
        );
        match registration.with_defaults() {
            Err(Unset::Required { processor, flags }) => {
                assert_eq!(processor, "needy");
                assert_eq!(flags, ["--needy-token <NEEDY_TOKEN>"]);
            }
            other => panic!("expected a missing flag, got {:?}", other.err()),
        }
        let matches = registration
            .command()
            .try_get_matches_from(["needy", "--needy-token", "t", "--group-id", "g"])
            .expect("valid flags");
        let prepared = registration.prepare(&matches).expect("prepared");
        assert_eq!(prepared.runtime.group_id.as_deref(), Some("g"));
        prepared
            .run(Box::pin(std::future::ready(())))
            .await
            .expect("ran with its flags");
    }
}
