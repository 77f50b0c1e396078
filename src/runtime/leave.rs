//! `fyn-runner uninstall` telling the API the runner is leaving for good.
//!
//! This is not part of the runner's lifecycle: the runner process has already stopped
//! (uninstall stops the service first), so there is no machine to drive and no trace
//! to keep. It is one short, bounded exchange with the stored identity: hello,
//! authenticate, `leaving`, `left`.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::protocol::{RunnerMessage, ServerMessage, decode_server, encode};

use super::identity::Identity;
use super::settings::RunnerSettings;

#[derive(Debug, thiserror::Error)]
pub enum LeaveError {
    #[error(
        "no identity in {0}: this runner was never registered, so there is nothing to tell the API"
    )]
    NoIdentity(String),
    #[error(transparent)]
    Identity(#[from] super::identity::IdentityError),
    #[error(transparent)]
    Tls(#[from] super::ws::TlsSetupError),
    #[error("{0}")]
    Connect(String),
    #[error("the API refused: {0}")]
    Refused(String),
    #[error("the API did not confirm within {0:?}")]
    Timeout(Duration),
    #[error("unexpected answer from the API: {0}")]
    Unexpected(String),
}

/// Tell the API this runner is gone; returns the runner ID it forgot.
pub async fn leave(settings: &RunnerSettings, within: Duration) -> Result<String, LeaveError> {
    let identity = Identity::load(&settings.state_dir)?
        .ok_or_else(|| LeaveError::NoIdentity(settings.state_dir.display().to_string()))?;
    leave_as(&identity, settings, "uninstalled", within).await
}

/// The same exchange with an identity in hand (an install rolling back a registration
/// has already taken its files away), giving `reason` to the API.
pub async fn leave_as(
    identity: &Identity,
    settings: &RunnerSettings,
    reason: &str,
    within: Duration,
) -> Result<String, LeaveError> {
    let tls = super::ws::tls_config(settings.ca_file.as_deref())?;
    let exchange = async {
        let mut ws = super::ws::connect(&settings.endpoint, tls, within)
            .await
            .map_err(LeaveError::Connect)?;
        let send = async |ws: &mut super::ws::WsStream, m: RunnerMessage| {
            ws.send(Message::text(encode(&m)))
                .await
                .map_err(|e| LeaveError::Connect(e.to_string()))
        };
        loop {
            let frame = ws
                .next()
                .await
                .ok_or_else(|| LeaveError::Unexpected("the connection ended".into()))?;
            let text = match frame {
                Ok(Message::Text(text)) => text,
                Ok(Message::Close(_)) => {
                    return Err(LeaveError::Unexpected(
                        "the API closed the connection".into(),
                    ));
                }
                Ok(_) => continue,
                Err(e) => return Err(LeaveError::Connect(e.to_string())),
            };
            match decode_server(text.as_str()).map_err(|e| LeaveError::Unexpected(e.to_string()))? {
                ServerMessage::Hello { nonce, .. } => {
                    let authenticate = RunnerMessage::Authenticate {
                        runner_id: identity.runner_id().to_owned(),
                        signature: identity.sign(&nonce),
                        name: settings.name.clone(),
                        version: env!("CARGO_PKG_VERSION").to_owned(),
                        slots: settings.core.slots,
                        last_command_index: 0,
                    };
                    send(&mut ws, authenticate).await?;
                }
                ServerMessage::Authenticated { .. } => {
                    send(
                        &mut ws,
                        RunnerMessage::Leaving {
                            reason: reason.to_owned(),
                        },
                    )
                    .await?;
                }
                ServerMessage::AuthRejected { reason } => return Err(LeaveError::Refused(reason)),
                ServerMessage::Left {} => {
                    let _ = ws.close(None).await;
                    return Ok(identity.runner_id().to_owned());
                }
                // Anything else the API may say meanwhile is not for an uninstall.
                _ => {}
            }
        }
    };
    tokio::time::timeout(within, exchange)
        .await
        .map_err(|_| LeaveError::Timeout(within))?
}
