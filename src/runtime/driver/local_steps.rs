//! Local steps the core asks for: install steps and their rollback, the identity key
//! (generated, saved, forgotten), the hardware record (collected off the async
//! threads, cached), and the farewell of a rolled-back install.
//!
//! Owns: the installer, the identity, the key waiting to be saved, the farewell in
//! flight. Must not: decide which step comes next or whether a failure is final; each
//! result goes back to the core as an event.
//!
//! Its state is pure mechanics: `pending_key` holds the private key between
//! `GenerateKey` (which also keeps it on disk, before `register` is sent) and the
//! `persist(identity)` the core asks for once the API has registered it (the core never
//! holds a secret); `farewell` is the task `run` waits for before it ends. Whether to
//! forget a registration is the core's `Farewell`; whether to reuse a kept key is the
//! core's too (it boots with the key's public half).

use std::path::PathBuf;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use tokio::sync::mpsc::UnboundedSender;
use tracing::{error, info, warn};

use crate::core::{Event, InstallStep};
use crate::protocol::HardwareReport;
use crate::runtime::hardware_check::collect_and_compare;
use crate::runtime::identity::{self, Identity};
use crate::runtime::install::Installer;
use crate::runtime::settings::RunnerSettings;

use super::input::Input;

/// How long a rolled-back registration may take to be forgotten by the API.
pub(super) const FAREWELL_WITHIN: Duration = Duration::from_secs(5);

pub(super) struct LocalSteps {
    /// Present only for `fyn-runner install`.
    installer: Option<Installer>,
    identity: Option<Identity>,
    /// The registration's key (generated here, or kept by an earlier attempt that did
    /// not finish), saved with the runner ID.
    pending_key: Option<SigningKey>,
    /// Telling the API to forget a registration that was rolled back.
    farewell: Option<tokio::task::JoinHandle<()>>,
    settings: RunnerSettings,
}

impl LocalSteps {
    pub(super) fn new(
        installer: Option<Installer>,
        identity: Option<Identity>,
        kept_key: Option<SigningKey>,
        settings: RunnerSettings,
    ) -> Self {
        Self {
            installer,
            identity,
            pending_key: kept_key,
            farewell: None,
            settings,
        }
    }

    pub(super) fn identity(&self) -> Option<&Identity> {
        self.identity.as_ref()
    }

    pub(super) fn installing(&self) -> bool {
        self.installer.is_some()
    }

    pub(super) fn install_step(&mut self, step: InstallStep) -> Event {
        let Some(installer) = self.installer.as_mut() else {
            return Event::StepFailed {
                error: format!(
                    "install step {} asked for outside `fyn-runner install`",
                    step.name()
                ),
            };
        };
        match installer.run(step) {
            Ok(done) => {
                info!(step = step.name(), "{done}");
                Event::StepDone
            }
            Err(error) => {
                error!(step = step.name(), %error, "install step failed");
                Event::StepFailed { error }
            }
        }
    }

    /// Undo every install step that ran (the whole install goes, the identity with
    /// the state folder it lives in, when the install made that folder).
    pub(super) fn rollback(&mut self) {
        if let Some(installer) = self.installer.as_mut() {
            installer.rollback();
        }
    }

    /// The token was refused: the key kept for this registration is of no use, and
    /// goes (a key without a runner ID only; a registered identity is never touched).
    pub(super) fn forget_key(&mut self) {
        self.pending_key = None;
        if self.identity.is_some() {
            return;
        }
        match Identity::forget_kept_key(&self.settings.state_dir) {
            Ok(true) => info!("removed the key kept for the refused registration"),
            Ok(false) => {}
            Err(e) => {
                error!(error = %e, "could not remove the key kept for the refused registration")
            }
        }
    }

    /// Forget the registration this install made: its identity files (they outlive a
    /// rollback when the state folder was there before), and, in the background and
    /// bounded, the API's record of it; `run` waits for that before it ends.
    pub(super) fn farewell(&mut self) {
        let Some(identity) = self.identity.take() else {
            warn!("a farewell was asked for, but this runner holds no identity");
            return;
        };
        match Identity::remove(&self.settings.state_dir) {
            Ok(()) => info!("rolled back the identity this registration created"),
            Err(e) => error!(error = %e, "could not remove the identity this registration created"),
        }
        let settings = self.settings.clone();
        self.farewell = Some(tokio::spawn(async move {
            let reason = "installation rolled back";
            match super::leave::leave_with(settings, identity, reason, FAREWELL_WITHIN).await {
                Ok(id) => {
                    info!(runner_id = %id, "the control plane forgot the rolled-back registration")
                }
                Err(e) => {
                    warn!(error = %e, "could not tell the control plane to forget the rolled-back registration")
                }
            }
        }));
    }

    /// The farewell in flight, for `run` to wait for.
    pub(super) fn take_farewell(&mut self) -> Option<tokio::task::JoinHandle<()>> {
        self.farewell.take()
    }

    /// A new key pair, kept on disk (private) before the core may send its public half
    /// in `register`.
    pub(super) fn generate_key(&mut self) -> Event {
        let kept = Identity::generate_key().and_then(|key| {
            Identity::keep_key(&self.settings.state_dir, &key)?;
            Ok(key)
        });
        match kept {
            Ok(key) => {
                let public_key = Identity::public_key_b64(&key);
                self.pending_key = Some(key);
                info!(path = %identity::identity_dir(&self.settings.state_dir).display(), "registration key kept");
                Event::KeyGenerated { public_key }
            }
            Err(e) => Event::StepFailed {
                error: e.to_string(),
            },
        }
    }

    /// Save the registered identity; the event says how that went (a failure is the
    /// registration's, which the core rolls back, not the store's).
    pub(super) fn save_identity(&mut self, runner_id: &str) -> Event {
        let Some(key) = self.pending_key.take() else {
            return Event::StepFailed {
                error: "no key was generated before registration".into(),
            };
        };
        let dir = &self.settings.state_dir;
        match Identity::save(dir, runner_id, &key).and_then(|()| Identity::load(dir)) {
            Ok(Some(identity)) => {
                self.identity = Some(identity);
                info!(runner_id, path = %identity::identity_dir(dir).display(), "identity saved");
                Event::StepDone
            }
            Ok(None) => Event::StepFailed {
                error: "the saved identity cannot be read back".into(),
            },
            Err(e) => Event::StepFailed {
                error: e.to_string(),
            },
        }
    }

    pub(super) fn save_hardware_cache(&self, report: &HardwareReport) -> Result<(), String> {
        crate::hardware::write_cache(&self.settings.state_dir, report).map_err(|e| e.to_string())
    }

    /// Collect the hardware on a blocking thread, compare it with the cache, and hand
    /// the result back as an event.
    pub(super) fn collect_hardware(&self, inputs: &UnboundedSender<Input>) {
        let state_dir = self.settings.state_dir.clone();
        let job_area: PathBuf = self.settings.jobs_root();
        let source = self.settings.hardware.clone();
        let inputs = inputs.clone();
        tokio::spawn(async move {
            let event = match tokio::task::spawn_blocking(move || {
                collect_and_compare(&source, &state_dir, &job_area)
            })
            .await
            {
                Ok(event) => event,
                Err(e) => Event::HardwareFailed {
                    error: format!("hardware collection task failed: {e}"),
                },
            };
            let _ = inputs.send(Input::Event(event));
        });
    }
}
