//! Wall-clock times as RFC 3339 text (`2025-03-01T12:00:00.250Z`), UTC.
//!
//! Status JSON, the terminal table and the report show times this way; the
//! serde helpers let the status model keep plain [`SystemTime`]s.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_core::calendar::{civil_from_days, days_from_civil};

const MICROS_PER_DAY: i64 = 86_400_000_000;

fn unix_micros(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX),
    }
}

fn from_unix_micros(m: i64) -> SystemTime {
    let d = Duration::from_micros(m.unsigned_abs());
    if m >= 0 {
        UNIX_EPOCH + d
    } else {
        UNIX_EPOCH - d
    }
}

/// `t` as `YYYY-MM-DDTHH:MM:SS.mmmZ` (milliseconds).
pub fn format(t: SystemTime) -> String {
    let micros = unix_micros(t);
    let (y, mo, d) = civil_from_days(micros.div_euclid(MICROS_PER_DAY));
    let day_micros = micros.rem_euclid(MICROS_PER_DAY);
    let secs = day_micros / 1_000_000;
    let millis = (day_micros % 1_000_000) / 1000;
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Parse `YYYY-MM-DDTHH:MM:SS[.fraction]Z` (UTC only, as [`format`] writes).
pub fn parse(s: &str) -> Option<SystemTime> {
    let s = s.strip_suffix('Z').or_else(|| s.strip_suffix('z'))?;
    let (date, time) = s.split_once(['T', 't', ' '])?;
    let mut dp = date.splitn(3, '-');
    let y: i64 = dp.next()?.parse().ok()?;
    let mo: u32 = dp.next()?.parse().ok()?;
    let d: u32 = dp.next()?.parse().ok()?;
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut tp = hms.splitn(3, ':');
    let h: i64 = tp.next()?.parse().ok()?;
    let mi: i64 = tp.next()?.parse().ok()?;
    let sec: i64 = tp.next()?.parse().ok()?;
    if !(0..=9999).contains(&y)
        || !(1..=12).contains(&mo)
        || !(1..=31).contains(&d)
        || h > 23
        || mi > 59
        || sec > 60
    {
        return None;
    }
    if !frac.chars().all(|c| c.is_ascii_digit()) || frac.len() > 9 {
        return None;
    }
    let frac_micros: i64 = format!("{frac:0<6}")[..6].parse().ok()?;
    let micros = days_from_civil(y, mo, d)
        .checked_mul(MICROS_PER_DAY)?
        .checked_add(((h * 60 + mi) * 60 + sec) * 1_000_000 + frac_micros)?;
    Some(from_unix_micros(micros))
}

/// Serde for `SystemTime` fields as RFC 3339 text.
pub mod serde_time {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let text = String::deserialize(d)?;
        super::parse(&text).ok_or_else(|| D::Error::custom(format!("invalid time {text:?}")))
    }
}

/// Serde for `Option<SystemTime>` fields as RFC 3339 text or null.
pub mod serde_time_opt {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_some(&super::format(*t)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| {
                super::parse(&text)
                    .ok_or_else(|| D::Error::custom(format!("invalid time {text:?}")))
            })
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses_back() {
        for (micros, text) in [
            (0, "1970-01-01T00:00:00.000Z"),
            (1_709_294_400_250_000, "2024-03-01T12:00:00.250Z"),
            (951_782_400_000_000, "2000-02-29T00:00:00.000Z"),
            (-1_000_000, "1969-12-31T23:59:59.000Z"),
        ] {
            let t = from_unix_micros(micros);
            assert_eq!(format(t), text);
            assert_eq!(parse(text), Some(t), "{text}");
        }
        assert_eq!(
            parse("2024-03-01T12:00:00.123456Z"),
            Some(from_unix_micros(1_709_294_400_123_456))
        );
        assert_eq!(
            parse("2024-03-01T12:00:00Z"),
            Some(from_unix_micros(1_709_294_400_000_000))
        );
    }

    #[test]
    fn garbage_does_not_parse() {
        for bad in [
            "",
            "Z",
            "2024-03-01",
            "2024-13-01T00:00:00Z",
            "2024-03-01T25:00:00Z",
            "2024-03-01T12:00:00+01:00",
            "2024-03-01T12:00:00.x1Z",
            "2024-03-01T12:00Z",
            "9999999999999999-01-01T00:00:00Z",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
