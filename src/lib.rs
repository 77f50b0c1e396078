/*!
fyn-runner: joins a machine to a job control plane over an authenticated WebSocket
session, reports its hardware, and runs the jobs it is handed.

The crate is split the way the system is: `core` decides (pure), `protocol` describes
the wire, and everything that touches the world lives outside `core`.
*/

pub mod cli;
pub mod config;
pub mod core;
pub mod ctl;
pub mod demo;
pub mod devserver;
pub mod exposition;
pub mod hardware;
pub mod platform;
pub mod protocol;
pub mod runtime;
pub mod service;
pub mod spec;
pub mod trace;
