//! The metrics text formats both `/metrics` endpoints serve (the runner's, behind
//! `--metrics-listen`, and the dev-server's): OpenMetrics when the scraper asks for it,
//! else Prometheus's classic text format. Encoding only; no metric lives here.

use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;

/// The two text expositions: OpenMetrics, for a scraper that asks for it (Prometheus
/// does, in its `Accept` header), else Prometheus's classic text format (0.0.4), which
/// `promtool check metrics`, `curl` and older scrapers read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exposition {
    OpenMetrics,
    PrometheusText,
}

impl Exposition {
    /// The format an `Accept` header asks for.
    pub fn negotiate(accept: Option<&str>) -> Self {
        match accept {
            Some(accept) if accept.contains("application/openmetrics-text") => Self::OpenMetrics,
            _ => Self::PrometheusText,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Self::PrometheusText => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        }
    }

    /// Encode `registry` in this format.
    pub fn encode(self, registry: &Registry) -> String {
        let mut text = String::new();
        let encoded = match self {
            Self::OpenMetrics => encode(&mut text, registry),
            Self::PrometheusText => {
                prometheus_client::encoding::prometheus_text::encode(&mut text, registry)
            }
        };
        // Writing into a String cannot fail; an encoder error would be a bug in a
        // metric's encoding, and the scrape then shows what was written before it.
        if let Err(error) = encoded {
            tracing::warn!(%error, "encoding the metrics failed");
        }
        text
    }
}
