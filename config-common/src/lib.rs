//! What the YAML configs of rw-proxy and writer-election have in common, so both services
//! parse, check and report the same way: [`ConfigError`] (`key: reason`, like `nginx -t`),
//! [`from_yaml`] (strict serde parsing that names the key of any error), the one
//! [`check_host_port`] rule for node addresses, the byte sizes of [`size`] and [`one_key`] for a
//! choice written as a map with exactly one key.
//!
//! Durations are not here: both configs use `humantime-serde` directly.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use serde::de::DeserializeOwned;

pub mod one_key;

/// An error in a configuration file: which key, and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The content is invalid. `key` is the dotted key path (`routing.rules[0].to`), or empty
    /// when the problem is the document as a whole (YAML syntax).
    #[error("{}{reason}", if key.is_empty() { String::new() } else { format!("{key}: ") })]
    Invalid { key: String, reason: String },
}

impl ConfigError {
    pub fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            reason: reason.into(),
        }
    }

    /// The dotted key path the error is about, if it is about a key.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } if !key.is_empty() => Some(key),
            _ => None,
        }
    }

    /// Reads `path`; the error names the file.
    pub fn read_file(path: &std::path::Path) -> Result<String, ConfigError> {
        std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// Deserializes a YAML document into `T`. A document with no content (empty, only comments)
/// is an empty mapping, so "all defaults" is an empty file. Errors name the key path
/// (`serde_path_to_error`), including an unknown key itself, not its parent.
pub fn from_yaml<T: DeserializeOwned>(text: &str) -> Result<T, ConfigError> {
    // Parsed once as a plain tree only to tell an empty document apart and to report YAML
    // syntax errors with their line. The typed pass below reads the text itself: from the tree,
    // `name: 1` or `until_body: true` would no longer be accepted as strings.
    let tree: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|e| ConfigError::invalid("", e.to_string()))?;
    if tree.is_null() {
        let empty = serde_yaml::Value::Mapping(serde_yaml::Mapping::new());
        return serde_path_to_error::deserialize(empty).map_err(path_error);
    }
    serde_path_to_error::deserialize(serde_yaml::Deserializer::from_str(text)).map_err(path_error)
}

fn path_error(e: serde_path_to_error::Error<serde_yaml::Error>) -> ConfigError {
    let path = e.path().to_string();
    let key = if path == "." { String::new() } else { path };
    let message = e.into_inner().to_string();
    // serde_yaml starts its message with its own idea of the path (the key, or for an unknown
    // key its parent); the key in front of the reason is the exact one already.
    let reason = match message.split_once(": ") {
        Some((its_path, rest)) if is_leading_path(its_path, &key) => rest.to_string(),
        _ => message,
    };
    ConfigError::invalid(key, reason)
}

/// `prefix` is `key` or one of its parents (`a.b` of `a.b.c`, `a` of `a[0]`).
fn is_leading_path(prefix: &str, key: &str) -> bool {
    key.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
}

/// The one rule for a node address: `host:port` where host is a DNS name, an IPv4 address or an
/// IPv6 address in brackets, and port is 1..=65535. The error is the reason only; the caller
/// puts the key in front.
pub fn check_host_port(addr: &str) -> Result<(), String> {
    let bad = |why: &str| format!("{addr:?} is not host:port ({why})");
    let (host, port) = addr.rsplit_once(':').ok_or_else(|| bad("no port"))?;
    if !port.bytes().all(|b| b.is_ascii_digit()) || !matches!(port.parse::<u16>(), Ok(1..)) {
        return Err(bad("port must be 1..=65535"));
    }
    if host.is_empty() {
        return Err(bad("no host"));
    }
    if let Some(inner) = host.strip_prefix('[') {
        return match inner.strip_suffix(']').map(str::parse::<Ipv6Addr>) {
            Some(Ok(_)) => Ok(()),
            _ => Err(bad("not a valid IPv6 address in brackets")),
        };
    }
    if host.contains(':') {
        return Err(bad("put an IPv6 address in brackets"));
    }
    // Digits and dots only can only mean an IPv4 address; a DNS name has a letter somewhere.
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return match host.parse::<Ipv4Addr>() {
            Ok(_) => Ok(()),
            Err(_) => Err(bad("not a valid IPv4 address")),
        };
    }
    if is_dns_name(host) {
        Ok(())
    } else {
        Err(bad("host must be a DNS name or an IP address"))
    }
}

/// Labels of letters, digits, `-` and `_` (compose service names), 1 to 63 bytes, not
/// starting or ending with `-`; at most 253 bytes; one trailing dot allowed (a rooted name).
fn is_dns_name(host: &str) -> bool {
    let name = host.strip_suffix('.').unwrap_or(host);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Byte sizes: a number of bytes, or a number with a unit. `K`, `M`, `G` are binary as in
/// nginx, which a size crate would read as decimal (`bytesize`), changing what a file means.
pub mod size {
    use std::fmt;

    use serde::de::{self, Deserializer, Visitor};

    /// Parses "64MiB", "64 KiB", "1MB", "10k", "512", "512B". Binary (KiB) and decimal (KB)
    /// units; a bare K/M/G is binary.
    pub fn parse_size(s: &str) -> Result<u64, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (digits, unit) = s.split_at(split);
        if digits.is_empty() {
            return Err(
                "expected a number followed by an optional unit (B, KiB, MiB, GiB, KB, MB, GB)"
                    .into(),
            );
        }
        let n: u64 = digits.parse().map_err(|e| format!("{e}"))?;
        let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kib" => 1 << 10,
            "m" | "mib" => 1 << 20,
            "g" | "gib" => 1 << 30,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            other => {
                return Err(format!(
                    "unknown unit {other:?} (expected B, KiB, MiB, GiB, KB, MB or GB)"
                ))
            }
        };
        n.checked_mul(multiplier)
            .ok_or_else(|| "too large".to_string())
    }

    /// For `#[serde(deserialize_with = "config_common::size::deserialize")]` on a `u64`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        d.deserialize_any(SizeVisitor)
    }

    /// The same for an `Option<u64>` with `#[serde(default)]`.
    pub fn deserialize_option<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        deserialize(d).map(Some)
    }

    struct SizeVisitor;

    impl Visitor<'_> for SizeVisitor {
        type Value = u64;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a size such as \"64MiB\", \"64KiB\" or a number of bytes")
        }
        fn visit_u64<E: de::Error>(self, n: u64) -> Result<u64, E> {
            Ok(n)
        }
        fn visit_i64<E: de::Error>(self, n: i64) -> Result<u64, E> {
            u64::try_from(n)
                .map_err(|_| E::custom(format!("invalid size {n}: must not be negative")))
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<u64, E> {
            parse_size(s).map_err(|e| E::custom(format!("invalid size {s:?}: {e}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[test]
    fn host_port_rule() {
        for ok in [
            "127.0.0.1:9001",
            "[::1]:80",
            "[2001:db8::1]:65535",
            "node-0.storage.ns.svc.cluster.local:8080",
            "localhost:1",
            "my_service:80",
            "host.:80",
        ] {
            assert_eq!(check_host_port(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("[zz]:80", "IPv6"),
            ("[::1:80", "IPv6"),
            ("::1:80", "brackets"),
            ("host:0", "1..=65535"),
            ("host:", "1..=65535"),
            ("host:65536", "1..=65535"),
            ("host:+80", "1..=65535"),
            (":80", "no host"),
            ("a b:80", "DNS name"),
            ("a/b:80", "DNS name"),
            ("-a:80", "DNS name"),
            ("a..b:80", "DNS name"),
            ("999.1.1.1:80", "IPv4"),
            ("host", "no port"),
        ] {
            match check_host_port(bad) {
                Ok(()) => panic!("{bad} accepted"),
                Err(e) => assert!(e.contains(why) && e.contains(bad), "{bad}: {e}"),
            }
        }
    }

    #[test]
    fn sizes() {
        use size::parse_size;
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("64 KiB").unwrap(), 64 << 10);
        assert_eq!(parse_size("1MB").unwrap(), 1_000_000);
        assert_eq!(parse_size("10k").unwrap(), 10 << 10);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_size("512").unwrap(), 512);
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("1 TiB").is_err());
        assert!(parse_size("1.5MiB").is_err());
        assert!(parse_size("99999999999GiB").is_err());
    }

    #[derive(Deserialize, Debug, Default)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        #[serde(default, deserialize_with = "size::deserialize_option")]
        size: Option<u64>,
        #[serde(default)]
        inner: Vec<Inner>,
    }

    #[derive(Deserialize, Debug, Default)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        name: String,
    }

    #[test]
    fn errors_name_the_exact_key_once() {
        let e = from_yaml::<Doc>("inner: [ { name: a }, { nme: b } ]").unwrap_err();
        assert_eq!(e.key(), Some("inner[1].nme"), "{e}");
        assert!(
            e.to_string()
                .starts_with("inner[1].nme: unknown field `nme`"),
            "{e}"
        );
        let e = from_yaml::<Doc>("size: 5XB").unwrap_err();
        assert!(
            e.to_string().starts_with("size: invalid size \"5XB\""),
            "{e}"
        );
        let e = from_yaml::<Doc>("size: -1").unwrap_err();
        assert!(e.to_string().contains("must not be negative"), "{e}");
        let e = from_yaml::<Doc>("inner: [ {} ]").unwrap_err();
        assert_eq!(e.key(), Some("inner[0]"), "{e}");
        assert!(e.to_string().contains("missing field `name`"), "{e}");
        let e = from_yaml::<Doc>("size: [unclosed\n").unwrap_err();
        assert_eq!(e.key(), None);
        assert!(e.to_string().contains("line"), "{e}");
    }

    #[test]
    fn an_empty_document_is_an_empty_mapping_and_scalars_stay_strings() {
        let d = from_yaml::<Doc>("# only a comment\n").unwrap();
        assert!(d.size.is_none() && d.inner.is_empty());
        let d = from_yaml::<Doc>("size: 2KiB\ninner: [ { name: 1 }, { name: true } ]").unwrap();
        assert_eq!(d.size, Some(2048));
        assert_eq!(d.inner[0].name, "1");
        assert_eq!(d.inner[1].name, "true");
        let e = from_yaml::<Inner>("").unwrap_err();
        assert!(e.to_string().contains("missing field `name`"), "{e}");
    }

    #[test]
    fn read_errors_name_the_file() {
        let e = ConfigError::read_file(std::path::Path::new("/nonexistent/x.yaml")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/x.yaml"), "{e}");
        assert_eq!(e.key(), None);
    }
}
