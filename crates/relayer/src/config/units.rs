//! Serde adapters for the config contract's units: durations as strings like
//! `"500ms"`, `"10s"`, `"5m"`, and sizes as bytes (integers) or strings like
//! `"64MiB"`. Serialisation writes the same human form back, so
//! `check-config` prints what a user would type.

use std::time::Duration;

/// Parses `"500ms"`, `"10s"`, `"5m"`, `"1h 30m"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|err| format!("{err}; expected a duration like \"500ms\", \"10s\" or \"5m\""))
}

/// Parses a byte size: a plain integer, or `"64MiB"`, `"1 MB"`, `"512KiB"`.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    if let Ok(n) = trimmed.parse::<u64>() {
        return Ok(n);
    }
    trimmed
        .parse::<bytesize::ByteSize>()
        .map(|size| size.as_u64())
        .map_err(|err| format!("{err}; expected bytes like 1048576 or \"64MiB\""))
}

/// Formats a duration the way `parse_duration` reads it.
pub fn format_duration(value: Duration) -> String {
    humantime::format_duration(value).to_string()
}

/// Formats bytes as a binary-unit string when exact (`"64MiB"`), else digits.
pub fn format_bytes(value: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (suffix, unit) in UNITS {
        if value >= unit && value.is_multiple_of(unit) {
            return format!("{}{suffix}", value / unit);
        }
    }
    value.to_string()
}

pub mod duration {
    //! `#[serde(with = ...)]` for `Duration` fields.
    use super::{format_duration, parse_duration};
    use serde::{de, Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format_duration(*value))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_duration(&text)
            .map_err(|msg| de::Error::custom(format!("invalid duration {text:?}: {msg}")))
    }
}

pub mod bytes {
    //! `#[serde(with = ...)]` for byte-size fields: integers or unit strings.
    use super::{format_bytes, parse_bytes};
    use serde::{de, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &u64, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format_bytes(*value))
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(u64),
        Text(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
        match Raw::deserialize(deserializer)? {
            Raw::Number(n) => Ok(n),
            Raw::Text(text) => parse_bytes(&text)
                .map_err(|msg| de::Error::custom(format!("invalid size {text:?}: {msg}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_contract_forms() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert!(parse_duration("ten seconds").is_err());
    }

    #[test]
    fn sizes_parse_as_integers_and_binary_units() {
        assert_eq!(parse_bytes("64MiB").unwrap(), 64 * 1024 * 1024);
        assert_eq!(parse_bytes("1048576").unwrap(), 1048576);
        assert!(parse_bytes("lots").is_err());
    }

    #[test]
    fn formats_round_trip() {
        assert_eq!(format_bytes(64 * 1024 * 1024), "64MiB");
        assert_eq!(format_bytes(1000), "1000");
        assert_eq!(
            parse_duration(&format_duration(Duration::from_millis(1500))).unwrap(),
            Duration::from_millis(1500)
        );
    }
}
