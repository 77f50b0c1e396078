//! The steps within the lifecycle's states (`Registering.await_token`,
//! `Draining.forced`): the data a state carries, named as the spec table names them.
//! Must not: hold behaviour; the machine (`super`) moves between them.

use serde::{Deserialize, Serialize};
use strum::IntoStaticStr;

// The steps' names are the spec table's (`Validating.await_auth`), the same as serde's.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, IntoStaticStr)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum RegisterStep {
    /// Waiting out the backoff before the next attempt (the token is still held).
    Waiting,
    Connecting,
    AwaitHello,
    AwaitToken,
    AwaitKey,
    AwaitRegistration,
    Saving,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, IntoStaticStr)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum ValidateStep {
    Connecting,
    AwaitHello,
    AwaitAuth,
    AwaitStartup,
    /// A farewell (`BootMode::Leave`): `leaving` sent, waiting for `left`.
    AwaitLeft,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, IntoStaticStr)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum SyncStep {
    Collecting,
    AwaitConfirm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, IntoStaticStr)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum ReconnectStep {
    /// Waiting out the backoff delay.
    Waiting,
    /// A connection attempt is in flight.
    Connecting,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, IntoStaticStr)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum DrainMode {
    /// Jobs may finish until the deadline.
    Graceful,
    /// Jobs were told to stop; wait for them (bounded), flush, exit non-zero.
    Forced,
}

macro_rules! step_names {
    ($($ty:ident)*) => {$(
        impl $ty {
            pub fn name(self) -> &'static str {
                self.into()
            }
        }
    )*};
}

step_names!(RegisterStep ValidateStep SyncStep ReconnectStep DrainMode);
