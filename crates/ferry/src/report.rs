//! `ferry report`: one self-contained HTML file (no external JS or CSS).
//!
//! Shows the lag over time as two inline SVG charts drawn from the
//! `lag_history` samples (seconds and bytes, each on its own scale) — after
//! a cutover with fallback also those of the reverse stream, recorded in
//! the old source's state schema, in charts of their own — the
//! per-table figures of the [`Status`], every validation over the weeks
//! (one row per table per run: rows, differences, repairs, clean), and the
//! cutover record when there is one. [`render_report`] is pure; the command reads the status and
//! `ferry_monitor::read_history` and writes the result to a file. Every text
//! that comes from the database (table names, positions, errors) is
//! HTML-escaped.

use std::fmt::Write as _;
use std::time::SystemTime;

use ferry_monitor::status::{TableStatus, grouped, human_bytes, human_seconds};
use ferry_monitor::timestamp;
use ferry_monitor::{CutoverRecord, LagSample, Status, TableValidation};

const CHART_W: f64 = 900.0;
const CHART_H: f64 = 220.0;
const PAD_L: f64 = 70.0;
const PAD_B: f64 = 24.0;
const PAD_T: f64 = 10.0;

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;color:#222}\
table{border-collapse:collapse}td,th{padding:4px 10px;border-bottom:1px solid #ddd;text-align:left}\
td.n{text-align:right;font-variant-numeric:tabular-nums}h1{font-size:1.4em}h2{font-size:1.1em;margin-top:2em}\
svg text{font-size:11px;fill:#555}.muted{color:#777}";

/// The whole report as one HTML document.
/// `reverse`: the reverse stream's lag samples (empty without a fallback).
pub fn render_report(
    status: &Status,
    samples: &[LagSample],
    reverse: &[LagSample],
    validations: &[TableValidation],
) -> String {
    let mut out = String::with_capacity(16 * 1024 + samples.len() * 40);
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>ferry report</title><style>{STYLE}</style></head><body>\n\
         <h1>ferry migration report</h1>\n<p class=\"muted\">generated {}</p>\n",
        timestamp::format(status.as_of)
    );
    summary(&mut out, status);
    out.push_str("<h2>Lag over time</h2>\n");
    if samples.is_empty() {
        out.push_str("<p class=\"muted\">no lag history recorded yet</p>\n");
    } else {
        lag_charts(&mut out, "", samples);
    }
    if !reverse.is_empty() {
        out.push_str(
            "<h2>Reverse lag (fallback)</h2>\n<p class=\"muted\">the new database streamed back into the old source after the cutover</p>\n",
        );
        lag_charts(&mut out, "reverse-", reverse);
    }
    tables(&mut out, &status.tables);
    validation(&mut out, validations);
    if let Some(p) = &status.proxy {
        shadow(&mut out, p);
    }
    if let Some(c) = &status.cutover {
        cutover(&mut out, c);
    }
    out.push_str("</body></html>\n");
    out
}

/// The seconds and bytes charts of `samples`; `prefix` keeps ids unique.
fn lag_charts(out: &mut String, prefix: &str, samples: &[LagSample]) {
    let secs: Vec<(SystemTime, f64)> = samples.iter().map(|s| (s.at, s.lag_seconds)).collect();
    let bytes: Vec<(SystemTime, f64)> =
        samples.iter().map(|s| (s.at, s.lag_bytes as f64)).collect();
    chart(
        out,
        &format!("{prefix}lag-seconds"),
        "lag (seconds)",
        &secs,
        &|v| human_seconds(v),
    );
    chart(
        out,
        &format!("{prefix}lag-bytes"),
        "lag (bytes)",
        &bytes,
        &|v| human_bytes(v as u64),
    );
}

/// `s` safe inside HTML text and attribute values.
pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

fn row(out: &mut String, key: &str, value: &str) {
    let _ = writeln!(
        out,
        "<tr><th>{}</th><td>{}</td></tr>",
        escape(key),
        escape(value)
    );
}

fn summary(out: &mut String, s: &Status) {
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    out.push_str("<table class=\"summary\">\n");
    row(
        out,
        "phase",
        &format!("{}{}", s.phase, if s.paused { " (paused)" } else { "" }),
    );
    if let Some(t) = s.run_started {
        row(out, "run started", &timestamp::format(t));
    }
    row(out, "source", &s.source_kind);
    let lag = if s.lag.caught_up {
        "caught up".to_owned()
    } else {
        format!(
            "{} / {}",
            human_seconds(s.lag.seconds),
            human_bytes(s.lag.bytes)
        )
    };
    row(out, "lag", &lag);
    row(out, "source head", &opt(&s.source_position));
    row(out, "applied position", &opt(&s.applied_position));
    if let Some(slot) = &s.slot {
        let retained = slot
            .retained_wal_bytes
            .map(human_bytes)
            .unwrap_or_else(|| "-".into());
        row(
            out,
            "slot",
            &format!(
                "{} (retains {retained}, wal_status {})",
                slot.name,
                slot.wal_status.as_deref().unwrap_or("-")
            ),
        );
    }
    if let Some(e) = &s.last_error {
        row(out, "last error", e);
    }
    out.push_str("</table>\n");
}

/// One line chart: value over time, as an SVG polyline with one point per sample.
fn chart(
    out: &mut String,
    id: &str,
    title: &str,
    points: &[(SystemTime, f64)],
    label: &dyn Fn(f64) -> String,
) {
    let secs = |t: SystemTime| ferry_monitor::lag::seconds_between(SystemTime::UNIX_EPOCH, t);
    let t0 = points
        .iter()
        .map(|p| secs(p.0))
        .fold(f64::INFINITY, f64::min);
    let t1 = points
        .iter()
        .map(|p| secs(p.0))
        .fold(f64::NEG_INFINITY, f64::max);
    let vmax = points
        .iter()
        .map(|p| p.1)
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    let span = (t1 - t0).max(1.0);
    let top = if vmax > 0.0 { vmax } else { 1.0 };
    let plot_w = CHART_W - PAD_L - 10.0;
    let plot_h = CHART_H - PAD_T - PAD_B;
    let mut coords = String::with_capacity(points.len() * 16);
    for (t, v) in points {
        let x = PAD_L + (secs(*t) - t0) / span * plot_w;
        let v = if v.is_finite() { v.max(0.0) } else { 0.0 };
        let y = PAD_T + plot_h - v / top * plot_h;
        let _ = write!(coords, "{x:.1},{y:.1} ");
    }
    let first = points
        .first()
        .map(|p| timestamp::format(p.0))
        .unwrap_or_default();
    let last = points
        .last()
        .map(|p| timestamp::format(p.0))
        .unwrap_or_default();
    let (base, right) = (PAD_T + plot_h, PAD_L + plot_w);
    let _ = write!(
        out,
        "<h3>{title}</h3>\n<svg id=\"{id}\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{CHART_W}\" height=\"{CHART_H}\" \
         viewBox=\"0 0 {CHART_W} {CHART_H}\" role=\"img\" aria-label=\"{title}\">\n\
         <line x1=\"{PAD_L}\" y1=\"{PAD_T}\" x2=\"{PAD_L}\" y2=\"{base}\" stroke=\"#999\"/>\
         <line x1=\"{PAD_L}\" y1=\"{base}\" x2=\"{right}\" y2=\"{base}\" stroke=\"#999\"/>\n\
         <text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\
         <text x=\"{}\" y=\"{base}\" text-anchor=\"end\">0</text>\n\
         <text x=\"{PAD_L}\" y=\"{}\">{first}</text><text x=\"{right}\" y=\"{}\" text-anchor=\"end\">{last}</text>\n\
         <polyline fill=\"none\" stroke=\"#1f6feb\" stroke-width=\"1.5\" points=\"{}\"/>\n</svg>\n",
        PAD_L - 6.0,
        PAD_T + 10.0,
        escape(&label(top)),
        PAD_L - 6.0,
        CHART_H - 6.0,
        CHART_H - 6.0,
        coords.trim_end(),
    );
}

fn tables(out: &mut String, tables: &[TableStatus]) {
    out.push_str("<h2>Tables</h2>\n");
    if tables.is_empty() {
        out.push_str("<p class=\"muted\">no tables</p>\n");
        return;
    }
    out.push_str(
        "<table class=\"tables\"><tr><th>table</th><th>state</th><th>rows copied</th>\
         <th>estimate</th><th>chunks</th><th>changes applied</th></tr>\n",
    );
    for t in tables {
        let est = t.rows_estimated.map(grouped).unwrap_or_else(|| "-".into());
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}/{}</td><td class=\"n\">{}</td></tr>",
            escape(&t.name),
            escape(&t.state),
            grouped(t.rows_copied),
            est,
            t.chunks_done,
            t.chunks_total,
            grouped(t.changes_applied)
        );
    }
    out.push_str("</table>\n");
}

fn validation(out: &mut String, runs: &[TableValidation]) {
    out.push_str("<h2>Validation</h2>\n");
    if runs.is_empty() {
        out.push_str("<p class=\"muted\">no validation yet (<code>ferry validate</code>)</p>\n");
        return;
    }
    out.push_str(
        "<table class=\"validation\"><tr><th>finished</th><th>table</th><th>result</th>\
         <th>rows</th><th>ranges</th><th>differences</th><th>unsettled</th><th>repaired</th>\
         <th>duration</th><th>rows/s</th></tr>\n",
    );
    for v in runs {
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            timestamp::format(v.finished_at),
            escape(&v.table),
            if v.clean { "clean" } else { "NOT CLEAN" },
            grouped(v.rows_checked),
            v.ranges,
            v.differences.len(),
            v.unsettled.len(),
            v.repaired,
            human_seconds(v.duration_seconds()),
            grouped(v.rows_per_second.round() as u64)
        );
    }
    out.push_str("</table>\n");
}

/// Shadow reads through the proxy, per fingerprint.
fn shadow(out: &mut String, p: &ferry_monitor::proxy::ProxyStatus) {
    out.push_str("<h2>Shadow reads (proxy)</h2>\n");
    let _ = writeln!(
        out,
        "<p>mode {} · mirrored {} · mismatches {} · errors only on the target {} · dropped {}</p>",
        escape(&p.mode),
        p.mirrored,
        p.mismatches,
        p.target_errors,
        p.mirror_dropped
    );
    out.push_str(
        "<table class=\"shadow\"><tr><th>fingerprint</th><th>statement</th><th>calls</th>\
         <th>mirrored</th><th>mismatches</th><th>target errors</th><th>p50/p99 source ms</th>\
         <th>p50/p99 target ms</th><th>example</th></tr>\n",
    );
    let ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"));
    for q in &p.queries {
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td><code>{}</code></td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}/{}</td>\
             <td class=\"n\">{}/{}</td><td>{}</td></tr>",
            escape(&q.fingerprint),
            escape(&q.query),
            q.calls,
            q.mirrored,
            q.mismatches,
            q.target_errors,
            ms(q.source_p50_ms),
            ms(q.source_p99_ms),
            ms(q.target_p50_ms),
            ms(q.target_p99_ms),
            escape(q.example.as_deref().unwrap_or(""))
        );
    }
    out.push_str("</table>\n");
}

fn cutover(out: &mut String, c: &CutoverRecord) {
    out.push_str("<h2>Cutover</h2>\n<table class=\"cutover\">\n");
    row(out, "outcome", &c.outcome);
    row(out, "dry run", if c.dry_run { "yes" } else { "no" });
    row(out, "started", &timestamp::format(c.started_at));
    if let Some(t) = c.finished_at {
        row(out, "finished", &timestamp::format(t));
    }
    row(out, "writes fenced", if c.fenced { "yes" } else { "no" });
    let freeze = c
        .write_freeze_seconds
        .map(human_seconds)
        .unwrap_or_else(|| "-".into());
    row(out, "write freeze", &freeze);
    row(
        out,
        "final position",
        c.final_position.as_deref().unwrap_or("-"),
    );
    row(out, "lag at start", &human_seconds(c.lag_seconds_at_start));
    row(out, "sequences synced", &c.sequences_synced.to_string());
    if !c.restored.is_empty() {
        row(out, "target schema restored", &c.restored.join("; "));
    }
    row(
        out,
        "slot dropped",
        if c.slot_dropped { "yes" } else { "no" },
    );
    out.push_str("</table>\n");
    if !c.validation.is_empty() {
        out.push_str("<table class=\"validation\"><tr><th>table</th><th>source rows</th><th>target rows</th><th>match</th></tr>\n");
        for v in &c.validation {
            let n = |x: Option<u64>| x.map(grouped).unwrap_or_else(|| "-".into());
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
                escape(&v.table),
                n(v.source_rows),
                n(v.target_rows),
                if v.ok { "yes" } else { "NO" }
            );
        }
        out.push_str("</table>\n");
    }
    if !c.steps.is_empty() {
        out.push_str("<ol class=\"steps\">\n");
        for s in &c.steps {
            let _ = writeln!(out, "<li>{}</li>", escape(s));
        }
        out.push_str("</ol>\n");
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ferry_monitor::{LagFigures, Phase, TableCheck};

    use super::*;

    fn status() -> Status {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_709_294_400);
        let mut s = Status::new(Phase::Done, "mysql", t0 + Duration::from_secs(3600));
        s.lag = LagFigures {
            seconds: 0.0,
            bytes: 0,
            caught_up: true,
        };
        s.tables = vec![
            TableStatus {
                name: "shop.<script>alert(1)</script>".into(),
                state: "streaming".into(),
                rows_copied: 1_500,
                rows_estimated: Some(1_400),
                chunks_done: 1,
                chunks_total: 1,
                changes_applied: 7,
            },
            TableStatus {
                name: "shop.a&b".into(),
                state: "streaming".into(),
                ..TableStatus::default()
            },
        ];
        s.cutover = Some(CutoverRecord {
            dry_run: false,
            started_at: t0 + Duration::from_secs(3500),
            finished_at: Some(t0 + Duration::from_secs(3504)),
            fenced: true,
            write_freeze_seconds: Some(3.2),
            final_position: Some("binlog.000003:1234".into()),
            lag_seconds_at_start: 0.8,
            sequences_synced: 4,
            validation: vec![TableCheck {
                table: "shop.\"q\"".into(),
                source_rows: Some(1500),
                target_rows: Some(1500),
                ok: true,
            }],
            slot_dropped: true,
            restored: Vec::new(),
            steps: vec!["fence source writes".into()],
            outcome: "done".into(),
        });
        s
    }

    fn samples(n: u64) -> Vec<LagSample> {
        (0..n)
            .map(|i| LagSample {
                at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_709_294_400 + i * 10),
                lag_seconds: (i % 7) as f64,
                lag_bytes: i * 100,
            })
            .collect()
    }

    fn polyline_points(html: &str, id: &str) -> Vec<(f64, f64)> {
        let svg = &html[html.find(&format!("<svg id=\"{id}\"")).expect("svg")..];
        let svg = &svg[..svg.find("</svg>").expect("end of svg")];
        let start = svg.find("points=\"").expect("polyline") + "points=\"".len();
        let pts = &svg[start..start + svg[start..].find('"').expect("closing quote")];
        pts.split(' ')
            .map(|p| {
                let (x, y) = p.split_once(',').expect("x,y");
                (x.parse().expect("x"), y.parse().expect("y"))
            })
            .collect()
    }

    #[test]
    fn the_reverse_lag_has_charts_of_its_own_only_after_a_fallback() {
        let html = render_report(&status(), &samples(5), &samples(12), &[]);
        assert!(html.contains("<h2>Reverse lag (fallback)</h2>"), "{html}");
        assert_eq!(polyline_points(&html, "lag-seconds").len(), 5);
        assert_eq!(polyline_points(&html, "reverse-lag-seconds").len(), 12);
        assert_eq!(polyline_points(&html, "reverse-lag-bytes").len(), 12);
        let without = render_report(&status(), &samples(5), &[], &[]);
        assert!(!without.contains("Reverse lag"), "{without}");
    }

    #[test]
    fn charts_have_one_point_per_sample() {
        let html = render_report(&status(), &samples(25), &[], &[]);
        for id in ["lag-seconds", "lag-bytes"] {
            let pts = polyline_points(&html, id);
            assert_eq!(pts.len(), 25, "{id}");
            assert!(
                pts.windows(2).all(|w| w[0].0 < w[1].0),
                "x grows with time: {id}"
            );
            assert!(
                pts.iter()
                    .all(|(x, y)| (0.0..=CHART_W).contains(x) && (0.0..=CHART_H).contains(y))
            );
        }
        // Bytes grow steadily: the last point is the highest (smallest y).
        let bytes = polyline_points(&html, "lag-bytes");
        assert_eq!(bytes.last().map(|p| p.1), Some(PAD_T));
        assert_eq!(html.matches("<polyline").count(), 2);
        // A single sample still draws (no division by zero).
        let one = render_report(&status(), &samples(1), &[], &[]);
        assert_eq!(polyline_points(&one, "lag-seconds").len(), 1);
        assert!(!one.contains("NaN") && !one.contains("inf"));
    }

    #[test]
    fn text_from_the_database_is_escaped() {
        let html = render_report(&status(), &samples(3), &[], &[]);
        assert!(!html.contains("<script>"), "raw table name leaked");
        assert!(html.contains("shop.&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("shop.a&amp;b"));
        assert!(html.contains("shop.&quot;q&quot;"));
        assert!(html.contains("binlog.000003:1234"));
        assert!(html.contains("write freeze</th><td>3.2s"));
        assert!(html.contains("1,500"));
    }

    #[test]
    fn shadow_reads_are_listed_per_fingerprint() {
        let mut s = status();
        s.proxy = Some(ferry_monitor::proxy::ProxyStatus {
            mode: "source".into(),
            mismatches: 2,
            queries: vec![ferry_monitor::proxy::ShadowQuery {
                fingerprint: "00aa".into(),
                query: "select a from t where b < ?".into(),
                calls: 10,
                mirrored: 5,
                mismatches: 2,
                example: Some("rows differ: 1 only on the source, 0 only on the target".into()),
                ..Default::default()
            }],
            ..Default::default()
        });
        let html = render_report(&s, &[], &[], &[]);
        assert!(html.contains("Shadow reads (proxy)"), "{html}");
        assert!(html.contains("select a from t where b &lt; ?"), "{html}");
        assert!(html.contains("1 only on the source"), "{html}");
        assert!(!render_report(&status(), &[], &[], &[]).contains("Shadow reads"));
    }

    #[test]
    fn report_is_self_contained() {
        let html = render_report(&status(), &[], &[], &[]);
        assert!(html.starts_with("<!DOCTYPE html>") && html.trim_end().ends_with("</html>"));
        for external in ["<script", "<link", "src=", "@import", "url("] {
            assert!(!html.contains(external), "{external}");
        }
        assert!(html.contains("no lag history recorded yet"));
    }

    #[test]
    fn validations_are_listed_per_run() {
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let run = |table: &str, clean: bool, diffs: usize| TableValidation {
            table: table.into(),
            started_at: at,
            finished_at: at + std::time::Duration::from_secs(4),
            rows_checked: 12_000,
            ranges: 3,
            differences: vec![ferry_monitor::KeyDifference::default(); diffs],
            clean,
            rows_per_second: 3000.0,
            ..TableValidation::default()
        };
        let html = render_report(
            &status(),
            &[],
            &[],
            &[run("public.<a>", false, 2), run("public.<a>", true, 0)],
        );
        assert!(html.contains("<h2>Validation</h2>"));
        assert!(html.contains("<td>public.&lt;a&gt;</td><td>NOT CLEAN</td><td class=\"n\">12,000</td><td class=\"n\">3</td><td class=\"n\">2</td>"), "{html}");
        assert!(
            html.contains("<td>public.&lt;a&gt;</td><td>clean</td>"),
            "{html}"
        );
        assert!(render_report(&status(), &[], &[], &[]).contains("no validation yet"));
    }
}
