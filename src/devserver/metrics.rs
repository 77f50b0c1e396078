//! The dev-server's own `/metrics`, on the admin API and so behind the admin token
//! (Prometheus sends it with `authorization: {credentials_file: ...}`): runners by
//! state, connected sessions, the job queue's depth, jobs by state, and the admin
//! API's request latencies by route.
//!
//! Owns: the request-latency histograms (by method and route template: a closed set)
//! and the snapshot of the store taken at each scrape. Must not: change anything.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use super::api::{JobState, RunnerState};
use super::error::DevServerError;
use super::server::AppState;
use crate::exposition::Exposition;

type RouteLabels = [(&'static str, String); 2];
type Latencies = Family<RouteLabels, Histogram, fn() -> Histogram>;

/// What lives between scrapes: the request latencies.
#[derive(Clone)]
pub(crate) struct ApiMetrics {
    latencies: Latencies,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_1, 2.0, 16))
}

impl ApiMetrics {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            latencies: Family::new_with_constructor(latency_histogram),
        })
    }

    /// The exposition: a registry made for this scrape from the store's state, plus
    /// the latencies.
    fn render(&self, app: &AppState, format: Exposition) -> Result<String, DevServerError> {
        let mut registry = Registry::with_prefix("fyn_devserver");
        let runners = app.hub.runners()?;
        let by_state = Family::<[(&'static str, &'static str); 1], Gauge>::default();
        for state in [
            RunnerState::Validating,
            RunnerState::HardwareSync,
            RunnerState::Ready,
            RunnerState::Active,
            RunnerState::Draining,
            RunnerState::Disconnected,
        ] {
            let count = runners.iter().filter(|r| r.state == state).count();
            by_state
                .get_or_create(&[("state", runner_state_name(state))])
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        registry.register("runners", "Registered runners, by state", by_state);
        let sessions = Gauge::<i64>::default();
        sessions.set(i64::try_from(runners.iter().filter(|r| r.connected).count()).unwrap_or(0));
        registry.register("sessions", "Runner sessions connected now", sessions);
        let jobs = app.hub.jobs()?;
        let jobs_by_state = Family::<[(&'static str, &'static str); 1], Gauge>::default();
        for state in [
            JobState::Queued,
            JobState::Assigned,
            JobState::Accepted,
            JobState::Running,
            JobState::Finished,
            JobState::Cancelled,
            JobState::Lost,
            JobState::Failed,
        ] {
            let count = jobs.iter().filter(|j| j.state == state).count();
            jobs_by_state
                .get_or_create(&[("state", state.as_str())])
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        registry.register("jobs", "Jobs, by state", jobs_by_state);
        let queue = Gauge::<i64>::default();
        let queued = jobs.iter().filter(|j| j.state == JobState::Queued).count();
        queue.set(i64::try_from(queued).unwrap_or(i64::MAX));
        registry.register("queue_depth", "Jobs waiting for a runner", queue);
        registry.register_with_unit(
            "request_duration",
            "Admin API requests, from routing to the answer, by method and route",
            Unit::Seconds,
            self.latencies.clone(),
        );
        Ok(format.encode(&registry))
    }
}

fn runner_state_name(state: RunnerState) -> &'static str {
    match state {
        RunnerState::Validating => "validating",
        RunnerState::HardwareSync => "hardware_sync",
        RunnerState::Ready => "ready",
        RunnerState::Active => "active",
        RunnerState::Draining => "draining",
        RunnerState::Disconnected => "disconnected",
    }
}

/// `GET /metrics`.
pub(crate) async fn metrics_page(
    State((app, metrics)): State<(AppState, Arc<ApiMetrics>)>,
    headers: HeaderMap,
) -> Result<Response, DevServerError> {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = Exposition::negotiate(accept);
    let text = metrics.render(&app, format)?;
    Ok(([(header::CONTENT_TYPE, format.content_type())], text).into_response())
}

/// Time every routed request (the route's template, never its values, is the label).
pub(crate) async fn track(
    State(metrics): State<Arc<ApiMetrics>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    metrics
        .latencies
        .get_or_create(&[("method", method), ("route", route)])
        .observe(started.elapsed().as_secs_f64());
    response
}
