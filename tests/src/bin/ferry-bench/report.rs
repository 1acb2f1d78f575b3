//! The report: one table row per benchmark, the cutover steps and the
//! problems, printed and written to `target/bench-report.md`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::cdc::CdcFigures;
use crate::load::LoadFigures;
use crate::sqlite::SqliteFigures;
use crate::{Sizes, cutover, memory};

#[derive(Debug, Default)]
pub(crate) struct Report {
    pub(crate) scale: u32,
    pub(crate) quick: bool,
    pub(crate) environment: String,
    pub(crate) load: Option<LoadFigures>,
    pub(crate) cdc: Vec<CdcFigures>,
    pub(crate) cutover: Option<cutover::CutoverFigures>,
    pub(crate) lag: Option<cutover::LagFigures>,
    pub(crate) fallback: Option<crate::fallback::FallbackFigures>,
    pub(crate) memory: Option<ferry_e2e::memory::MemoryFigures>,
    pub(crate) sqlite: Option<SqliteFigures>,
    pub(crate) validate: Option<crate::validate::ValidateFigures>,
    pub(crate) mariadb_load: Option<crate::mariadb::MariaDbLoadFigures>,
    pub(crate) mariadb_cdc: Option<crate::mariadb_cdc::MariaDbCdcFigures>,
    pub(crate) proxy: Option<crate::proxy::ProxyFigures>,
    pub(crate) failures: Vec<String>,
}

impl Report {
    pub(crate) fn new(sizes: &Sizes) -> Report {
        Report {
            scale: sizes.scale,
            quick: sizes.quick,
            ..Report::default()
        }
    }

    pub(crate) fn ferry_failed(&mut self, step: &str, e: &anyhow::Error) {
        say!("  ferry FAILED in {step}: {e:#}");
        self.failures.push(format!("ferry failed in {step}: {e:#}"));
    }

    pub(crate) fn render(&self) -> String {
        let mut s = String::from("# ferry benchmark\n\n");
        let _ = writeln!(
            s,
            "Scale {}{}. {}\n\nFigures are throughput; ratios compare ferry with a reference measured \
             in the same run on the same servers (for cutover and lag: with a fixed target). \
             Not a pass/fail test.\n",
            self.scale,
            if self.quick { " (--quick)" } else { "" },
            self.environment
        );
        s.push_str("| benchmark | size | reference | ferry | ratio ferry/reference (target) |\n|---|---|---|---|---|\n");
        if let Some(l) = &self.load {
            s.push_str(&l.row());
        }
        for c in &self.cdc {
            s.push_str(&c.row());
        }
        if let Some(c) = &self.cutover {
            s.push_str(&c.row());
        }
        if let Some(l) = &self.lag {
            s.push_str(&l.row());
        }
        if let Some(f) = &self.fallback {
            s.push_str(&f.rows());
        }
        if let Some(m) = &self.mariadb_load {
            s.push_str(&m.row());
        }
        if let Some(m) = &self.mariadb_cdc {
            s.push_str(&m.rows());
        }
        if let Some(m) = &self.memory {
            s.push_str(&memory::row(m));
        }
        if let Some(v) = &self.validate {
            s.push_str(&v.row());
        }
        if let Some(p) = &self.proxy {
            s.push_str(&p.rows());
        }
        if let Some(l) = &self.load {
            s.push_str(&l.detail());
        }
        if let Some(c) = &self.cutover {
            s.push_str(&c.steps_section());
        }
        if let Some(q) = &self.sqlite {
            q.render(&mut s);
        }
        if !self.failures.is_empty() {
            s.push_str("\n## Problems\n\n");
            for f in &self.failures {
                let _ = writeln!(s, "```\n{}\n```", f.trim());
            }
        }
        s
    }
}

pub(crate) fn report_path() -> PathBuf {
    if let Some(p) = std::env::var_os("FERRY_BENCH_REPORT") {
        return PathBuf::from(p);
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .unwrap_or(manifest)
        .join("target")
        .join("bench-report.md")
}

pub(crate) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub(crate) fn rate(per_s: f64) -> String {
    if per_s >= 1e6 {
        format!("{:.2}M", per_s / 1e6)
    } else if per_s >= 1e3 {
        format!("{:.1}k", per_s / 1e3)
    } else {
        format!("{per_s:.1}")
    }
}

pub(crate) fn mib(kb: Option<u64>) -> String {
    kb.map_or_else(|| "?".to_owned(), |k| format!("{} MiB", k / 1024))
}

pub(crate) fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

pub(crate) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
