use std::collections::BTreeMap;

use super::*;

#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

/// A strict parser of the Prometheus text format: every sample belongs to a
/// family declared by `# HELP` and `# TYPE` before it; names and labels are
/// well formed; label values unescape; values are floats.
fn parse(text: &str) -> Result<(BTreeMap<String, String>, Vec<Sample>), String> {
    let mut types = BTreeMap::new();
    let mut helped = Vec::new();
    let mut samples = Vec::new();
    for (no, line) in text.lines().enumerate() {
        let err = |m: &str| format!("line {}: {m}: {line:?}", no + 1);
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, _) = rest
                .split_once(' ')
                .ok_or_else(|| err("help without text"))?;
            check_name(name).map_err(|e| err(&e))?;
            helped.push(name.to_owned());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest
                .split_once(' ')
                .ok_or_else(|| err("type without kind"))?;
            if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                return Err(err("unknown type"));
            }
            if helped.last().map(String::as_str) != Some(name) {
                return Err(err("TYPE not right after its HELP"));
            }
            if types.insert(name.to_owned(), kind.to_owned()).is_some() {
                return Err(err("family declared twice"));
            }
        } else if line.starts_with('#') || line.is_empty() {
            return Err(err("unexpected comment or blank line"));
        } else {
            let s = parse_sample(line).map_err(|e| err(&e))?;
            let family = family_of(&s.name, &types).ok_or_else(|| err("undeclared family"))?;
            if types[family] != "histogram" && family != s.name {
                return Err(err("suffix on a non-histogram"));
            }
            samples.push(s);
        }
    }
    Ok((types, samples))
}

fn family_of<'a>(name: &'a str, types: &BTreeMap<String, String>) -> Option<&'a str> {
    if types.contains_key(name) {
        return Some(name);
    }
    ["_bucket", "_sum", "_count"]
        .iter()
        .filter_map(|suf| name.strip_suffix(suf))
        .find(|base| types.get(*base).is_some_and(|t| t == "histogram"))
}

fn check_name(n: &str) -> Result<(), String> {
    let ok = n.chars().enumerate().all(|(i, c)| {
        c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
    });
    if ok && !n.is_empty() {
        Ok(())
    } else {
        Err(format!("bad name {n:?}"))
    }
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    check_name(name)?;
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices().peekable();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            if c == '}' {
                end = Some(i);
                break;
            }
            let mut lname = String::from(c);
            for (_, c) in chars.by_ref() {
                if c == '=' {
                    break;
                }
                lname.push(c);
            }
            check_name(&lname)?;
            if chars.next().map(|x| x.1) != Some('"') {
                return Err("label value not quoted".into());
            }
            let mut value = String::new();
            loop {
                match chars.next().map(|x| x.1) {
                    Some('\\') => match chars.next().map(|x| x.1) {
                        Some('\\') => value.push('\\'),
                        Some('"') => value.push('"'),
                        Some('n') => value.push('\n'),
                        _ => return Err("bad escape".into()),
                    },
                    Some('"') => break,
                    Some('\n') | None => return Err("unterminated label value".into()),
                    Some(c) => value.push(c),
                }
            }
            labels.push((lname, value));
            if let Some((_, ',')) = chars.peek() {
                chars.next();
            }
        }
        let end = end.ok_or("unterminated labels")?;
        rest = &body[end + 1..];
    }
    let value = rest.strip_prefix(' ').ok_or("no space before value")?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse::<f64>().map_err(|_| format!("bad value {v:?}"))?,
    };
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

fn value_of(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && s.labels.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(a, b)| a == k && b == v))
        })
        .map(|s| s.value)
}

#[test]
fn rendered_text_is_strict_prometheus_format() {
    let m = Metrics::new();
    m.set_phase("load");
    m.set_phase("stream");
    m.applied("public.orders", 3);
    m.applied_counter("public.orders").add(2);
    m.applied("odd \"name\"\\with\nnewline", 1);
    m.received(9);
    m.set_lag(1.5, 4096);
    m.load_rows("public.orders", 100);
    m.set_load_estimate("public.orders", 120);
    m.error("transient");
    m.error("transient");
    m.set_slot_retained(1 << 20);
    m.set_positions(Some(1000), Some(900));
    m.source_order_changes(4);
    m.source_order_changes(3);
    for ms in [0, 3, 40, 700, 90_000] {
        m.batch(Duration::from_millis(ms));
    }
    let zero = |load, stream| ferry_core::source::ColumnCount {
        table: "shop.orders".into(),
        column: "shipped".into(),
        load,
        stream,
    };
    m.set_zero_dates(&[zero(2, 1)]);
    m.set_zero_dates(&[zero(2, 5)]);
    let text = m.render();
    let (types, samples) = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));

    assert_eq!(types[names::APPLY_BATCH_SECONDS], "histogram");
    assert_eq!(types[names::APPLIED_CHANGES], "counter");
    assert_eq!(types[names::LAG_SECONDS], "gauge");
    let v = |n: &str, l: &[(&str, &str)]| {
        value_of(&samples, n, l).unwrap_or_else(|| panic!("{n} {l:?}\n{text}"))
    };
    assert_eq!(
        v(names::APPLIED_CHANGES, &[("table", "public.orders")]),
        5.0
    );
    assert_eq!(
        v(
            names::APPLIED_CHANGES,
            &[("table", "odd \"name\"\\with\nnewline")]
        ),
        1.0
    );
    assert_eq!(v(names::RECEIVED_CHANGES, &[]), 9.0);
    assert_eq!(v(names::LAG_SECONDS, &[]), 1.5);
    assert_eq!(v(names::LAG_BYTES, &[]), 4096.0);
    assert_eq!(v(names::LOAD_ROWS, &[("table", "public.orders")]), 100.0);
    assert_eq!(
        v(names::LOAD_ROWS_ESTIMATED, &[("table", "public.orders")]),
        120.0
    );
    assert_eq!(v(names::ERRORS, &[("kind", "transient")]), 2.0);
    assert_eq!(v(names::SLOT_RETAINED_WAL_BYTES, &[]), 1_048_576.0);
    assert_eq!(v(names::SOURCE_POSITION_BYTES, &[]), 1000.0);
    assert_eq!(v(names::APPLIED_POSITION_BYTES, &[]), 900.0);
    assert_eq!(v(names::APPLY_BATCHES, &[]), 5.0);
    assert_eq!(types[names::APPLY_SOURCE_ORDER_CHANGES], "counter");
    assert_eq!(v(names::APPLY_SOURCE_ORDER_CHANGES, &[]), 7.0);
    assert_eq!(v(names::PHASE, &[("phase", "stream")]), 1.0);
    assert_eq!(v(names::PHASE, &[("phase", "load")]), 0.0);
    assert_eq!(v(names::PHASE, &[("phase", "plan")]), 0.0);
    assert_eq!(types[names::ZERO_DATES_STREAMED], "counter");
    let column = [("column", "shop.orders.shipped")];
    assert_eq!(v(names::ZERO_DATES_LOADED, &column), 2.0);
    assert_eq!(v(names::ZERO_DATES_STREAMED, &column), 5.0);

    // Histogram: buckets ascending by `le`, cumulative, +Inf last == _count.
    let hist = names::APPLY_BATCH_SECONDS;
    let buckets: Vec<(f64, f64)> = samples
        .iter()
        .filter(|s| s.name == format!("{hist}_bucket"))
        .map(|s| {
            let le = &s.labels.iter().find(|(k, _)| k == "le").expect("le").1;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().expect("le float")
            };
            (le, s.value)
        })
        .collect();
    assert_eq!(buckets.len(), BATCH_SECONDS_BUCKETS.len() + 1);
    assert!(
        buckets
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
        "{buckets:?}"
    );
    assert_eq!(buckets.last().copied(), Some((f64::INFINITY, 5.0)));
    assert_eq!(v(&format!("{hist}_count"), &[]), 5.0);
    assert!((v(&format!("{hist}_sum"), &[]) - 90.743).abs() < 1e-9);
    assert_eq!(v(&format!("{hist}_bucket"), &[("le", "0.001")]), 1.0);
    assert_eq!(v(&format!("{hist}_bucket"), &[("le", "0.005")]), 2.0);
    assert_eq!(v(&format!("{hist}_bucket"), &[("le", "60")]), 4.0);
}

#[test]
fn parser_rejects_malformed_text() {
    for bad in [
        "ferry_x 1\n",
        "# HELP ferry_x h\n# TYPE ferry_x gauge\nferry_x{a=\"b} 1\n",
        "# HELP ferry_x h\n# TYPE ferry_x gauge\nferry_x{a=\"\\q\"} 1\n",
        "# HELP ferry_x h\n# TYPE ferry_x gauge\nferry_x one\n",
        "# HELP ferry_x h\n# TYPE ferry_x gauge\nferry_x_sum 1\n",
        "# TYPE ferry_x gauge\nferry_x 1\n",
    ] {
        assert!(parse(bad).is_err(), "accepted {bad:?}");
    }
}

#[test]
fn special_floats_render_as_prometheus_spells_them() {
    assert_eq!(format_float(f64::INFINITY), "+Inf");
    assert_eq!(format_float(f64::NEG_INFINITY), "-Inf");
    assert_eq!(format_float(f64::NAN), "NaN");
    assert_eq!(format_float(0.25), "0.25");
    assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
}

#[test]
fn clones_share_one_registry_across_threads() {
    let m = Metrics::new();
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let m = m.clone();
            std::thread::spawn(move || {
                for _ in 0..1000 {
                    m.applied("t", 1);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("thread");
    }
    assert_eq!(m.applied_counter("t").get(), 4000);
}

#[test]
fn validation_results_are_gauges_per_table() {
    let m = Metrics::new();
    m.set_validation("public.items", false, 6, 5000, 1234.5, 1_700_000_000.0);
    m.set_validation("public.items", true, 0, 5000, 2000.0, 1_700_000_100.0);
    m.set_validation("a\"b", true, 0, 1, 1.0, 1.0);
    let (types, samples) = parse(&m.render()).expect("strict format");
    for name in [
        names::VALIDATION_CLEAN,
        names::VALIDATION_DIFFERENCES,
        names::VALIDATION_ROWS_CHECKED,
        names::VALIDATION_ROWS_PER_SECOND,
        names::VALIDATION_FINISHED,
    ] {
        assert_eq!(types.get(name).map(String::as_str), Some("gauge"), "{name}");
    }
    let items = [("table", "public.items")];
    // The newest result replaces the earlier one.
    assert_eq!(
        value_of(&samples, names::VALIDATION_CLEAN, &items),
        Some(1.0)
    );
    assert_eq!(
        value_of(&samples, names::VALIDATION_DIFFERENCES, &items),
        Some(0.0)
    );
    assert_eq!(
        value_of(&samples, names::VALIDATION_ROWS_CHECKED, &items),
        Some(5000.0)
    );
    assert_eq!(
        value_of(&samples, names::VALIDATION_FINISHED, &items),
        Some(1_700_000_100.0)
    );
    assert_eq!(
        value_of(&samples, names::VALIDATION_CLEAN, &[("table", "a\"b")]),
        Some(1.0)
    );
}
