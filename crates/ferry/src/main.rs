//! `ferry`: the command line.
//!
//! ```text
//! ferry --config ferry.toml plan      check prerequisites, print the plan
//! ferry --config ferry.toml run       full load + CDC until cutover; resumes
//! ```
//!
//! Every setting can also come from `FERRY_*` environment variables
//! (`FERRY_SOURCE_URL`, `FERRY_TARGET_URL`, …); see the README's config
//! reference. Exit codes: 0 success, 2 a prerequisite or precondition
//! failed (the output says the fix), 1 any other error.

mod pipeline;
mod plan;
mod shutdown;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ferry_core::config::Config;

#[derive(Debug, Parser)]
#[command(
    name = "ferry",
    version,
    about = "Zero-downtime database migration into PostgreSQL: full load, then change data capture until cutover"
)]
struct Cli {
    /// Config file (TOML). Settings also come from FERRY_* environment variables.
    #[arg(long, short, global = true, env = "FERRY_CONFIG")]
    config: Option<PathBuf>,

    /// Log filter, e.g. `info` or `ferry=debug`.
    #[arg(long, global = true, env = "FERRY_LOG", default_value = "info")]
    log: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check source and target prerequisites and print the migration plan.
    Plan {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Full load, then change data capture until stopped; resumes where it left off.
    Run,
}

/// Outcome of a command, mapped to the process exit code.
#[derive(Debug)]
pub enum Outcome {
    Ok,
    /// A prerequisite or precondition failed; the output said the fix.
    Refused,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            tracing::error!(error = %err, "cannot start the async runtime");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::Refused) => ExitCode::from(2),
        Err(err) => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("error: {err:#}");
            }
            ExitCode::from(1)
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<Outcome> {
    let config = load_config(cli.config.as_deref())?;
    match cli.command {
        Command::Plan { json } => plan::run(&config, json).await,
        Command::Run => {
            let (trigger, shutdown) = shutdown::channel();
            shutdown::on_signals(trigger)?;
            pipeline::run(&config, shutdown).await
        }
    }
}

fn load_config(path: Option<&std::path::Path>) -> anyhow::Result<Config> {
    let config = Config::load(path)?;
    config.validate()?;
    Ok(config)
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}
