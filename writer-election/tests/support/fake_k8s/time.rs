//! RFC 3339 timestamps as the API server writes them (`metav1.Time`: whole seconds, UTC, `Z`).
//!
//! Written by hand so the fake does not depend on which features of a date crate happen to be
//! switched on elsewhere in the dependency graph.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `2024-05-01T10:00:00Z`; times before 1970 are clamped to the epoch (never needed by a test).
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let secs = i64::try_from(secs).unwrap_or(i64::MAX / 2);
    let days = secs.div_euclid(86_400);
    let second_of_day = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        second_of_day / 3600,
        second_of_day % 3600 / 60,
        second_of_day % 60
    )
}

pub fn now() -> String {
    rfc3339(SystemTime::now())
}

pub fn seconds_from_now(seconds: u64) -> String {
    rfc3339(SystemTime::now() + Duration::from_secs(seconds))
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    // day is 1..=31 and month 1..=12 by construction.
    (year, month as u32, day as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        // A leap day and the last second of a day.
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400 + 86_399);
        assert_eq!(rfc3339(leap), "2000-02-29T23:59:59Z");
        let later = UNIX_EPOCH + Duration::from_secs(1_735_689_600);
        assert_eq!(rfc3339(later), "2025-01-01T00:00:00Z");
    }

    #[test]
    fn parses_back_with_the_type_kube_uses() {
        let text = now();
        let parsed: Result<k8s_openapi::jiff::Timestamp, _> = text.parse();
        assert!(parsed.is_ok(), "{text} is not RFC 3339");
    }
}
