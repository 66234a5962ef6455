//! `tracing`: span export. The collector's address is a host and port
//! like the control plane's, the sample rate a share between 0 and 1, the
//! service name a non-empty word.

use super::{xds::xds_address, Rules};
use crate::error::ConfigError;
use crate::file::FileTracing;
use crate::model::Tracing;

pub const DEFAULT_SAMPLE_RATE: f64 = 1.0;
pub const DEFAULT_SERVICE_NAME: &str = "strait";
pub const DEFAULT_MAX_QUEUED_SPANS: i64 = 2048;

pub(super) fn tracing(rules: &Rules<'_>, t: FileTracing) -> Result<Tracing, ConfigError> {
    let Some(otlp) = t.otlp else {
        // Spans with nowhere to go would only cost: say so rather than
        // accept a section that does nothing.
        return Err(ConfigError::Invalid {
            at: rules.at("tracing.otlp"),
            message: "tracing needs `otlp: {address: host:port}`, the collector spans go to".into(),
        });
    };
    if otlp.address.trim().is_empty() {
        return Err(ConfigError::Empty {
            at: rules.at("tracing.otlp.address"),
        });
    }
    xds_address(rules, "tracing.otlp.address", &otlp.address)?;
    let sample_rate = t.sample_rate.unwrap_or(DEFAULT_SAMPLE_RATE);
    if !(0.0..=1.0).contains(&sample_rate) {
        return Err(ConfigError::Invalid {
            at: rules.at("tracing.sample_rate"),
            message: format!("{sample_rate} is not a share between 0.0 and 1.0 (0.01 is 1%)"),
        });
    }
    let service_name = t
        .service_name
        .unwrap_or_else(|| DEFAULT_SERVICE_NAME.into());
    if service_name.trim().is_empty() {
        return Err(ConfigError::Empty {
            at: rules.at("tracing.service_name"),
        });
    }
    let max_queued_spans = otlp.max_queued_spans.unwrap_or(DEFAULT_MAX_QUEUED_SPANS);
    if !(1..=1_000_000).contains(&max_queued_spans) {
        return Err(ConfigError::OutOfRange {
            at: rules.at("tracing.otlp.max_queued_spans"),
            value: max_queued_spans,
            expected: "1 to 1000000",
        });
    }
    Ok(Tracing {
        otlp_address: otlp.address.trim().to_string(),
        max_queued_spans: usize::try_from(max_queued_spans).unwrap_or(1),
        sample_rate,
        service_name: service_name.trim().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use crate::Config;

    const BASE: &str = "clusters: [{name: a, endpoints: [{address: \"127.0.0.1:1\"}]}]\n";

    fn parse(tracing: &str) -> Result<Config, crate::ConfigError> {
        Config::from_yaml(&format!("{BASE}{tracing}"))
    }

    #[test]
    fn off_by_default_and_defaults_when_on() {
        assert_eq!(parse("").unwrap().tracing, None);
        let t = parse("tracing:\n  otlp: {address: \"collector.obs:4317\"}\n")
            .unwrap()
            .tracing
            .unwrap();
        assert_eq!(t.otlp_address, "collector.obs:4317");
        assert_eq!(t.sample_rate, 1.0);
        assert_eq!(t.service_name, "strait");
    }

    #[test]
    fn errors_name_field_and_line() {
        let cases = [
            ("tracing:\n  sample_rate: 0.5\n", "tracing.otlp", 2),
            (
                "tracing:\n  otlp: {address: \"127.0.0.1:4317\"}\n  sample_rate: 1.5\n",
                "tracing.sample_rate",
                4,
            ),
            (
                "tracing:\n  otlp:\n    address: nowhere\n",
                "tracing.otlp.address",
                4,
            ),
            (
                "tracing:\n  otlp: {address: \"127.0.0.1:4317\"}\n  service_name: \" \"\n",
                "tracing.service_name",
                4,
            ),
        ];
        for (yaml, field, line) in cases {
            let err = parse(yaml).expect_err(yaml);
            let at = err.at().expect("an error about a field");
            assert_eq!(at.field, field, "{err}");
            assert_eq!(at.line, Some(line), "{err}");
        }
    }

    #[test]
    fn dump_round_trips() {
        let config =
            parse("tracing:\n  otlp: {address: \"127.0.0.1:4317\"}\n  sample_rate: 0.01\n  service_name: web\n")
                .unwrap();
        let dumped = String::from_utf8(config.dump_json().unwrap()).unwrap();
        assert_eq!(Config::from_yaml(&dumped).unwrap(), config);
    }
}
