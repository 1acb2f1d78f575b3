//! `ferry`: the command line.
//!
//! ```text
//! ferry --config ferry.toml plan      check prerequisites, print the plan
//! ferry --config ferry.toml run       full load + CDC until cutover; resumes
//! ferry --config ferry.toml validate  compare source and target by key while CDC runs
//! ```
//!
//! Every setting can also come from `FERRY_*` environment variables
//! (`FERRY_SOURCE_URL`, `FERRY_TARGET_URL`, …); see the README's config
//! reference. Exit codes: 0 success, 2 a prerequisite or precondition
//! failed (the output says the fix), 1 any other error.

use ferry::{Outcome, control, operations, pipeline, plan, shutdown, terminal};

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use ferry_core::config::Config;
use ferry_core::duration::parse as parse_duration;

/// The change path allocates a few small values per row change on three
/// threads. In a profile of a CDC drain (`FERRY_BENCH_PERF`, see the
/// README) glibc malloc took about 15% of ferry's CPU, mimalloc about half.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc 3's `mi_option_purge_delay` (its `mi_option_e`; the Rust
/// bindings name it only for mimalloc 2). `tests::allocator_options`
/// checks the index against the option's documented default.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How long mimalloc keeps freed memory before it returns it to the OS.
/// Its default (1 s) returned a batch's freed rows between batches, and the
/// next batch faulted fresh pages back in: 5,200–6,700 page faults and
/// about 8% of ferry's CPU (the kernel zeroing them) in a 1M-change
/// tpcb-like drain, 520–580 with 10 s (README, Performance). Memory an idle
/// ferry no longer uses still goes back, 10 s later. `MIMALLOC_PURGE_DELAY`
/// set by the operator wins.
const PURGE_DELAY_MS: std::ffi::c_long = 10_000;

/// mimalloc 3's `mi_option_allow_thp`; `tests::allocator_options` checks
/// the index against the option's documented default and neighbours.
const MI_OPTION_ALLOW_THP: libmimalloc_sys::mi_option_t = 43;

fn tune_allocator() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one of mimalloc's option values (a plain store);
        // the index is checked by `tests::allocator_options`.
        #[allow(unsafe_code)]
        unsafe {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS)
        };
    }
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        disable_transparent_huge_pages();
    }
}

/// No transparent huge pages for ferry's heap: what `MIMALLOC_ALLOW_THP=0`
/// does, set before the first large allocation. mimalloc 3 advises the
/// kernel to back its 1 GiB arenas with 2 MiB pages, and the first touch
/// of each 2 MiB zeroes all of it, however little of it a heap uses: on
/// Pagila that zeroing was 15% of the CPU samples of ferry and its
/// pg_dumps from start to caught up; off, ferry's own CPU there fell by
/// a third and its peak RSS in a tpcb-like drain was 60–63 MiB instead of
/// 94–98 (README, Performance).
/// The kernel's flag is checked at each page fault, so it also covers an
/// arena reserved before `main`; pg_dump, which ferry starts, inherits it
/// (glibc's malloc asks for no huge pages anyway).
fn disable_transparent_huge_pages() {
    // SAFETY: sets one of mimalloc's option values (a plain store), and
    // the process's THP flag (a prctl with integer arguments only).
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_ALLOW_THP, 0);
        // Fails only on kernels before 3.15: ferry then runs as before.
        // The arguments are `unsigned long`s (the kernel refuses nonzero
        // unused ones), so passed at that width through the C varargs.
        let (disable, unused): (libc::c_ulong, libc::c_ulong) = (1, 0);
        let _ = libc::prctl(libc::PR_SET_THP_DISABLE, disable, unused, unused, unused);
    }
}

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

/// `ferry proxy …`.
#[derive(Debug, Subcommand)]
enum ProxyAction {
    /// Set the proxy's mode: `source` (everything to the source, reads
    /// mirrored) or `reads-on-target`.
    Mode {
        mode: String,
        /// Who asks, recorded with the change (default: the OS user).
        #[arg(long)]
        by: Option<String>,
    },
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
    /// Show phase, per-table progress, positions and lag of the migration.
    Status {
        #[arg(long)]
        json: bool,
        /// Refresh every 2 seconds until Ctrl-C.
        #[arg(long)]
        watch: bool,
        /// Add the lag history (hourly maxima, last 14 days).
        #[arg(long)]
        history: bool,
    },
    /// Ask the running `ferry run` to cut over to the target.
    Cutover {
        /// Report what would happen and the current lag; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Make the source database read-only and end its other sessions first.
        #[arg(long)]
        fence: bool,
        /// Refuse when lag is above this (e.g. 5s, 500ms).
        #[arg(long, value_parser = parse_duration, default_value = "5s")]
        max_lag: Duration,
        /// Give up and unfence when draining takes longer (e.g. 60s).
        #[arg(long, value_parser = parse_duration, default_value = "60s")]
        timeout: Duration,
        /// Keep the replication slot and publication afterwards.
        #[arg(long)]
        keep_slot: bool,
        /// Skip the per-table row count comparison (very large databases).
        #[arg(long)]
        skip_counts: bool,
        /// Refuse unless every table's last `ferry validate` is clean and at
        /// most this old (e.g. 1h; default 24h when given without a value).
        #[arg(long, value_parser = parse_duration, num_args = 0..=1, default_missing_value = "24h")]
        require_validated: Option<Duration>,
        /// Keep a way back: stream the target's changes into the old source
        /// afterwards, until `ferry rollback` or `ferry finish` (PostgreSQL
        /// sources, with --fence; the target needs wal_level = logical).
        #[arg(long)]
        with_fallback: bool,
        /// Cut over through the proxy ([proxy]): hold new statements at
        /// transaction boundaries, cut over, move proxied sessions to the
        /// target; with --fence the source is fenced after that switch.
        #[arg(long)]
        via_proxy: bool,
    },
    /// The PostgreSQL-wire proxy of the running `ferry run` ([proxy]).
    Proxy {
        #[command(subcommand)]
        action: ProxyAction,
    },
    /// After `cutover --with-fallback`: move back to the old source (fence
    /// the new database, drain, sync sequences back, compare counts, unfence
    /// the old source).
    Rollback {
        /// Report what would happen and the current lag; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Make the new database read-only and end its other sessions first.
        #[arg(long)]
        fence: bool,
        /// Refuse when the reverse lag is above this (e.g. 5s, 500ms).
        #[arg(long, value_parser = parse_duration, default_value = "5s")]
        max_lag: Duration,
        /// Give up and unfence when draining takes longer (e.g. 60s).
        #[arg(long, value_parser = parse_duration, default_value = "60s")]
        timeout: Duration,
        /// Skip the per-table row count comparison (very large databases).
        #[arg(long)]
        skip_counts: bool,
        /// Roll back through the proxy ([proxy]): hold new statements at
        /// transaction boundaries, roll back, move proxied sessions back to
        /// the old source; with --fence the new database is fenced after
        /// that switch.
        #[arg(long)]
        via_proxy: bool,
    },
    /// After `cutover --with-fallback`: end the fallback period (drop the
    /// reverse slot and publication, lift the old source's fence).
    Finish,
    /// Compare source and target row by row while changes keep flowing;
    /// optionally repair the keys that differ.
    Validate {
        /// Tables to validate (schema.table, comma separated); default all.
        #[arg(long, value_delimiter = ',')]
        tables: Vec<String>,
        /// Validate once and exit (the default).
        #[arg(long, conflicts_with = "continuous")]
        once: bool,
        /// Validate again and again (every validate.every_seconds, at least 60s) until Ctrl-C.
        #[arg(long)]
        continuous: bool,
        /// Re-copy the keys that differ from the source (exactly once with respect to the stream).
        #[arg(long)]
        repair: bool,
        #[arg(long)]
        json: bool,
    },
    /// Pause applying changes (the reader keeps the slot alive; lag grows).
    Pause,
    /// Resume applying changes.
    Resume,
    /// Drop the replication slot and publication ferry created on the source.
    Cleanup {
        /// Also drop ferry's state schema in the target (start over).
        #[arg(long)]
        state: bool,
    },
    /// Write a self-contained HTML report: lag over time and per-table figures.
    Report {
        #[arg(long, short, default_value = "ferry-report.html")]
        output: PathBuf,
    },
}

fn main() -> ExitCode {
    tune_allocator();
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
    // On a worker, not the main thread: a task woken by another (the
    // applier by the change stream, by its target connection) then
    // usually runs on the waker's thread without a futex wake-up.
    let outcome = runtime.block_on(async {
        tokio::spawn(dispatch(cli))
            .await
            .unwrap_or_else(|e| Err(anyhow::anyhow!("ferry's main task failed: {e}")))
    });
    match outcome {
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
            let signals = shutdown::Shutdown::new();
            shutdown::on_signals(signals.clone())?;
            // A cutover cancels the run's child token; the proxy, if any,
            // serves until a signal.
            pipeline::run(&config, signals.child_token()).await
        }
        Command::Status {
            json,
            watch,
            history,
        } => operations::status(&config, json, watch, history).await,
        Command::Cutover {
            dry_run,
            fence,
            max_lag,
            timeout,
            keep_slot,
            skip_counts,
            require_validated,
            with_fallback,
            via_proxy,
        } => {
            let req = control::CutoverRequest {
                via_proxy,
                dry_run,
                fence,
                max_lag_seconds: Some(max_lag.as_secs_f64()),
                timeout_seconds: Some(timeout.as_secs_f64()),
                keep_slot,
                skip_counts,
                require_validated_seconds: require_validated.map(|d| d.as_secs_f64()),
                with_fallback,
                ..control::CutoverRequest::default()
            };
            operations::cutover(&config, req).await
        }
        Command::Rollback {
            dry_run,
            fence,
            max_lag,
            timeout,
            skip_counts,
            via_proxy,
        } => {
            let req = control::CutoverRequest {
                via_proxy,
                dry_run,
                fence,
                max_lag_seconds: Some(max_lag.as_secs_f64()),
                timeout_seconds: Some(timeout.as_secs_f64()),
                skip_counts,
                rollback: true,
                ..control::CutoverRequest::default()
            };
            operations::cutover(&config, req).await
        }
        Command::Finish => operations::finish(&config).await,
        Command::Validate {
            tables,
            once: _,
            continuous,
            repair,
            json,
        } => {
            let req = ferry::validate::ValidateRequest { tables, repair };
            operations::validate(&config, &req, continuous, json).await
        }
        Command::Proxy {
            action: ProxyAction::Mode { mode, by },
        } => operations::proxy_mode(&config, mode, by).await,
        Command::Pause => operations::pause(&config, true).await,
        Command::Resume => operations::pause(&config, false).await,
        Command::Cleanup { state } => operations::cleanup(&config, state).await,
        Command::Report { output } => operations::report(&config, &output).await,
    }
}

fn load_config(path: Option<&std::path::Path>) -> anyhow::Result<Config> {
    let config = Config::load(path)?;
    config.validate()?;
    Ok(config)
}

/// Log lines go to stderr; on a terminal through the progress bars' writer
/// so that they never tear a bar ([`terminal`]). Only `tracing` events are
/// logged: `set_global_default` rather than `init()`, which would also route
/// the `log` records of the drivers (tokio-postgres prints every server
/// NOTICE that way) into the output.
fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let installed = match terminal::init() {
        Some(above_bars) => {
            tracing::subscriber::set_global_default(logs.with_writer(above_bars).finish())
        }
        None => tracing::subscriber::set_global_default(logs.with_writer(std::io::stderr).finish()),
    };
    installed.expect("the log subscriber is installed once, first thing in main");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn option(index: libmimalloc_sys::mi_option_t) -> std::ffi::c_long {
        // SAFETY: reads one of mimalloc's option values.
        #[allow(unsafe_code)]
        unsafe {
            libmimalloc_sys::mi_option_get(index)
        }
    }

    /// One test for both options (tests share the process, and
    /// `tune_allocator` sets both). The indexes are mimalloc's: before
    /// `tune_allocator` the purge delay reads its documented default (1000
    /// ms, which no other option of mimalloc 3 has), and `allow_thp` and
    /// its neighbours theirs (`page_cross_thread_max_reclaim` 32,
    /// `allow_thp` 1, `minimal_purge_size` 0), or what `MIMALLOC_*` set;
    /// after it, ours, and THP off for the kernel too.
    #[test]
    fn allocator_options() {
        let purge_from_env = std::env::var("MIMALLOC_PURGE_DELAY").ok();
        let thp_from_env = std::env::var_os("MIMALLOC_ALLOW_THP");
        let before = option(MI_OPTION_PURGE_DELAY);
        let thp_before = (
            option(MI_OPTION_ALLOW_THP - 1),
            option(MI_OPTION_ALLOW_THP),
            option(MI_OPTION_ALLOW_THP + 1),
        );
        tune_allocator();
        match purge_from_env.and_then(|v| v.trim().parse::<std::ffi::c_long>().ok()) {
            Some(set) => {
                assert_eq!(
                    before, set,
                    "MIMALLOC_PURGE_DELAY not read at option {MI_OPTION_PURGE_DELAY}"
                );
                assert_eq!(
                    option(MI_OPTION_PURGE_DELAY),
                    set,
                    "the operator's MIMALLOC_PURGE_DELAY was overridden"
                );
            }
            None => {
                assert_eq!(
                    before, 1000,
                    "option {MI_OPTION_PURGE_DELAY} is not mimalloc 3's purge delay (default 1000 ms)"
                );
                assert_eq!(option(MI_OPTION_PURGE_DELAY), PURGE_DELAY_MS);
            }
        }
        if thp_from_env.is_none() {
            assert_eq!(
                thp_before,
                (32, 1, 0),
                "option {MI_OPTION_ALLOW_THP} is not mimalloc 3's allow_thp"
            );
            assert_eq!(option(MI_OPTION_ALLOW_THP), 0);
            let zero: libc::c_ulong = 0;
            // SAFETY: reads the process's THP flag.
            #[allow(unsafe_code)]
            let disabled = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, zero, zero, zero, zero) };
            assert_eq!(disabled, 1, "PR_SET_THP_DISABLE did not take");
        }
    }
}
