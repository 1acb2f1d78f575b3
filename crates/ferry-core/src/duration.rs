//! Durations as operators write them: `5s`, `500ms`, `2m`, `1h`, or plain
//! seconds. One parser for the CLI (`--max-lag 5s`) and the console
//! (`CUTOVER MAX LAG '5s'`), so both accept exactly the same text.

use std::time::Duration;

/// Parse `5s`, `500ms`, `2m`, `1h` or plain seconds (`2.5`).
pub fn parse(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map_or((s, "s"), |i| (&s[..i], s[i..].trim()));
    let n: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration such as 5s or 500ms"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86_400.0,
        _ => {
            return Err(format!(
                "'{s}': unknown unit '{unit}' (use ms, s, m, h or d)"
            ));
        }
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("'{s}': {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_operators_write() {
        let cases = [
            ("5s", Some(5.0)),
            ("500ms", Some(0.5)),
            ("2m", Some(120.0)),
            ("1h", Some(3600.0)),
            ("1d", Some(86_400.0)),
            ("2.5", Some(2.5)),
            (" 10 s ", Some(10.0)),
            ("5x", None),
            ("s", None),
            ("", None),
            ("-1s", None),
        ];
        for (text, want) in cases {
            let got = parse(text).ok().map(|d| d.as_secs_f64());
            assert_eq!(got, want, "{text:?}");
        }
    }

    #[test]
    fn errors_name_the_text_and_the_units() {
        let e = parse("5x").unwrap_err();
        assert!(e.contains("'5x'") && e.contains("ms, s, m, h or d"), "{e}");
    }
}
