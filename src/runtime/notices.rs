//! How the core's notices reach the operator: a log line each, and for the ones that
//! explain a failure, the `problem` shown by `status` and `install`.

use tracing::{error, info, warn};

use crate::core::Notice;

/// The notices that explain why a runner stopped or failed.
pub(crate) fn problem_of(notice: &Notice) -> Option<String> {
    match notice {
        Notice::InstallFailed { error } => Some(format!("installation failed: {error}")),
        Notice::RegistrationFailed { reason } => Some(format!("registration failed: {reason}")),
        Notice::AuthRejected { reason } => {
            Some(format!("the control plane rejected this runner: {reason}"))
        }
        Notice::Incompatible { server_protocol } => Some(format!(
            "the control plane speaks protocol {server_protocol}, this runner {}",
            crate::protocol::PROTOCOL_VERSION
        )),
        Notice::Evicted { reason } => Some(format!("evicted: {reason}")),
        Notice::StoreFailed { error } => Some(format!("the durable store failed: {error}")),
        _ => None,
    }
}

pub(crate) fn log_notice(notice: &Notice) {
    match notice {
        Notice::Registered { runner_id } => info!(runner_id, "registered with the control plane"),
        Notice::Left { runner_id } => info!(runner_id, "the control plane forgot this runner"),
        Notice::Unexpected { event, detail } => {
            warn!(
                event,
                detail, "an event no phase expected here; it changed nothing"
            )
        }
        Notice::InstallFailed { error } => error!(error, "installation failed; rolling back"),
        Notice::RegistrationFailed { reason } => error!(reason, "registration failed"),
        Notice::AuthRejected { reason } => {
            error!(reason, "the control plane rejected this runner's identity")
        }
        Notice::Incompatible { server_protocol } => error!(
            server_protocol,
            ours = crate::protocol::PROTOCOL_VERSION,
            "the control plane speaks another protocol version"
        ),
        Notice::Evicted { reason } => warn!(
            reason,
            "evicted by a newer session of this runner; stopping"
        ),
        Notice::ProtocolViolation { phase, got } => warn!(
            phase,
            got, "protocol violation by the control plane; reconnecting"
        ),
        Notice::BadFrame { error } => warn!(
            error,
            "undecodable frame from the control plane; reconnecting"
        ),
        Notice::CommandRejected { index, reason } => warn!(
            index,
            reason, "a command from the control plane cannot be read; rejected under its index"
        ),
        Notice::NoIndexRoom { api_last, needed } => warn!(
            api_last,
            needed,
            "the control plane claims an event index that leaves no room in the protocol's \
             range to number this runner's events; closing (4002) and reconnecting"
        ),
        Notice::IndexRangeExhausted { index } => error!(
            index,
            "no event index left in the protocol's range: the event stays in the outbox, \
             unsent (the control plane claimed an index near the top of the range)"
        ),
        Notice::HardwareFailed { error } => warn!(error, "hardware collection failed"),
        Notice::RunnerLost => {
            warn!("disconnected past the runner-lost threshold; stopping running jobs")
        }
        Notice::StoreFailed { error } => error!(error, "the durable store failed"),
        Notice::JobFound { job, found } => match found.as_str() {
            "running" => {
                info!(job = %job.job_id, attempt = job.attempt, "reattached a job the previous run started: its supervisor still runs it")
            }
            "ended" => {
                info!(job = %job.job_id, attempt = job.attempt, "a job ended while no runner was running; reporting its output and end")
            }
            _ => {
                warn!(job = %job.job_id, attempt = job.attempt, "a job of the previous run has neither a supervisor nor a record of its end; reporting it lost")
            }
        },
        Notice::StaleJob { job, what } => {
            info!(job = %job.job_id, attempt = job.attempt, what, "ignored a report about a job not running here")
        }
    }
}
