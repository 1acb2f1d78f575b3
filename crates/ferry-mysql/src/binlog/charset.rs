//! Character-set decoding of string columns to UTF-8.
//!
//! Row images carry strings in the column's charset. Supported: the UTF-8
//! family (`utf8mb4`, `utf8mb3`/`utf8`), `ascii`, `latin1` (MySQL's latin1 is
//! Windows-1252, with the five undefined bytes mapped to C1 controls as MySQL
//! does), `ucs2`, `utf16`, `utf16le`, `utf32`. Bytes invalid in their
//! charset are an error; any other charset is an error naming it, with the
//! fix (convert the column to utf8mb4).

use mysql_common::collations::{Collation, CollationId};

/// Charset name of a collation id; `"unknown"` when the id is not known.
pub fn charset_of(collation: u16) -> &'static str {
    let id = CollationId::from(collation);
    if id == CollationId::UNKNOWN_COLLATION_ID {
        return "unknown";
    }
    let c: Collation<'static> = id.into();
    normalise(c.charset())
}

/// A charset name (`information_schema`, collation tables) as [`decode`] knows it.
pub fn normalise(name: &str) -> &'static str {
    match name.to_ascii_lowercase().as_str() {
        "utf8mb4" => "utf8mb4",
        "utf8" | "utf8mb3" => "utf8mb3",
        "ascii" => "ascii",
        "latin1" => "latin1",
        "binary" => "binary",
        "ucs2" => "ucs2",
        "utf16" => "utf16",
        "utf16le" => "utf16le",
        "utf32" => "utf32",
        _ => "other",
    }
}

/// Windows-1252 0x80..=0x9F as MySQL's latin1 maps them.
const CP1252_HIGH: [u32; 32] = [
    0x20AC, 0x0081, 0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021, 0x02C6, 0x2030, 0x0160, 0x2039,
    0x0152, 0x008D, 0x017D, 0x008F, 0x0090, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022, 0x2013, 0x2014,
    0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0x009D, 0x017E, 0x0178,
];

fn units<const N: usize>(b: &[u8], le: bool) -> Option<Vec<u32>> {
    if !b.len().is_multiple_of(N) {
        return None;
    }
    Some(
        b.chunks_exact(N)
            .map(|c| {
                let mut v = 0u32;
                for i in 0..N {
                    let byte = if le { c[N - 1 - i] } else { c[i] };
                    v = (v << 8) | u32::from(byte);
                }
                v
            })
            .collect(),
    )
}

/// Decodes `bytes` in `charset` (a name from [`charset_of`]).
pub fn decode(charset: &str, bytes: Vec<u8>) -> Result<String, String> {
    let bad = |cs: &str| format!("text is not valid {cs}");
    match charset {
        "utf8mb4" | "utf8mb3" | "ascii" | "binary" => {
            String::from_utf8(bytes).map_err(|_| bad(if charset == "binary" { "UTF-8" } else { charset }))
        }
        "unknown" => String::from_utf8(bytes).map_err(|_| {
            "text is not valid UTF-8 and its collation is unknown to ferry; convert the column to utf8mb4".to_owned()
        }),
        "latin1" => Ok(bytes
            .iter()
            .map(|&b| match b {
                0x80..=0x9F => char::from_u32(CP1252_HIGH[usize::from(b - 0x80)]).unwrap_or('\u{FFFD}'),
                _ => char::from(b),
            })
            .collect()),
        "ucs2" | "utf16" | "utf16le" => {
            let u = units::<2>(&bytes, charset == "utf16le").ok_or_else(|| bad(charset))?;
            let u16s: Vec<u16> = u.into_iter().map(|x| x as u16).collect();
            String::from_utf16(&u16s).map_err(|_| bad(charset))
        }
        "utf32" => units::<4>(&bytes, false)
            .ok_or_else(|| bad(charset))?
            .into_iter()
            .map(char::from_u32)
            .collect::<Option<String>>()
            .ok_or_else(|| bad(charset)),
        other => Err(format!(
            "character set {other} is not supported by the binlog reader; convert the column to utf8mb4"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charsets_decode() {
        assert_eq!(charset_of(45), "utf8mb4");
        assert_eq!(charset_of(255), "utf8mb4");
        assert_eq!(charset_of(33), "utf8mb3");
        assert_eq!(charset_of(8), "latin1");
        assert_eq!(charset_of(63), "binary");
        assert_eq!(decode("latin1", vec![b'M', 0xF6, 0x80]).unwrap(), "Mö€");
        assert_eq!(
            decode("utf16", vec![0, b'a', 0xD8, 0x3D, 0xDE, 0x00]).unwrap(),
            "a😀"
        );
        assert_eq!(decode("utf32", vec![0, 0, 0, b'z']).unwrap(), "z");
        assert!(decode("utf8mb4", vec![0xFF]).is_err());
        assert!(
            decode("other", b"x".to_vec())
                .unwrap_err()
                .contains("utf8mb4")
        );
    }
}
