//! Prometheus text exposition, read back: series (`name{labels}`) to value.

use std::collections::BTreeMap;

/// The samples of a Prometheus text page, keyed by the series exactly as written
/// (`name{label="value",...}`). Comments, blank lines and samples whose value does not parse are
/// left out.
pub fn parse(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            // The value is the last field: label values may hold spaces, values never do.
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.trim_end().to_string(), value.parse().ok()?))
        })
        .collect()
}

/// The value of one series, if the page has it.
pub fn value(text: &str, series: &str) -> Option<f64> {
    parse(text).get(series).copied()
}

/// The value of one series, 0 when the page does not have it: a labelled counter or gauge is not
/// exported before it is first touched, which means 0.
pub fn value_or_zero(text: &str, series: &str) -> f64 {
    value(text, series).unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "# HELP x_requests_total Requests.\n\
        # TYPE x_requests_total counter\n\
        x_requests_total{route=\"a b\",to=\"writer\"} 3\n\
        x_requests_total{route=\"c\",to=\"reader\"} 1.5\n\
        # HELP x_up 1 when up, else 0\n\
        x_up 1\n\
        x_bucket{le=\"+Inf\"} 7\n\
        \n\
        x_broken notanumber\n";

    #[test]
    fn reads_every_sample_by_its_series() {
        let m = parse(PAGE);
        assert_eq!(m.len(), 4, "{m:?}");
        assert_eq!(m["x_requests_total{route=\"a b\",to=\"writer\"}"], 3.0);
        assert_eq!(m["x_requests_total{route=\"c\",to=\"reader\"}"], 1.5);
        assert_eq!(m["x_up"], 1.0);
        assert_eq!(m["x_bucket{le=\"+Inf\"}"], 7.0);
    }

    #[test]
    fn a_series_is_found_only_by_its_whole_name() {
        assert_eq!(value(PAGE, "x_up"), Some(1.0));
        assert_eq!(value(PAGE, "x_u"), None);
        assert_eq!(value(PAGE, "x_requests_total"), None);
        assert_eq!(value_or_zero(PAGE, "x_down"), 0.0);
        assert_eq!(
            value_or_zero(PAGE, "x_requests_total{route=\"c\",to=\"reader\"}"),
            1.5
        );
    }
}
