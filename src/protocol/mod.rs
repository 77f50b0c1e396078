/*!
The wire protocol between a runner and its control plane ("the API").

Owns: every message that crosses the WebSocket, the protocol version, frame size
limits, close codes and the strict codec. All traffic is JSON text frames tagged by
`type`; `docs/protocol.md` is the human contract and must agree with this module.

Must not import: `core`, `runtime`, `devserver`, tokio or any socket type. Both sides
(the runner's runtime and the reference control plane) build on these types alone.
*/

mod auth;
mod codec;
mod digest;
mod fields;
mod hardware;
mod job;
mod job_files;
mod messages;

pub use auth::{AuthError, auth_message, verify_signature};
pub use codec::{CloseReason, FrameError, MAX_FRAME_BYTES, decode_runner, decode_server, encode};
pub use digest::{CONTENT_DIGEST, content_digest, from_hex, parse_content_digest, to_hex};
pub use fields::MAX_INDEX;
pub use hardware::{
    ApplyError, CpuInfo, FieldChange, Gpu, GpuInventory, HardwareChanges, HardwareReport, JobDisk,
    MemoryInfo, OsInfo, apply_changes, diff_values,
};
pub use job::{
    DEFAULT_CANCEL_GRACE_SECS, DEFAULT_OUTPUT_LIMIT_BYTES, ExitStatus, JobOutcome, JobPhase,
    JobRef, JobSpec, JobSpecError, JobUsage, MAX_CANCEL_GRACE_SECS, MAX_TIMEOUT_SECS, OutputStream,
    RejectReason, validate_env, validate_job_id,
};
pub use job_files::{
    InputFile, MAX_JOB_FILES, MAX_KV_KEY_BYTES, MAX_KV_KEYS, MAX_KV_VALUE_BYTES, MAX_PATH_BYTES,
    MAX_URL_BYTES, OutputFile, OutputTarget, glob_matches, url_without_query, validate_file_path,
    validate_kv, validate_kv_key, validate_sha256, validate_url,
};
pub use messages::MAX_PROGRESS_MESSAGE_BYTES;
pub use messages::{Command, RunnerEvent, RunnerMessage, ServerMessage, SessionParams};

/// The protocol version this build speaks. The server announces its own in `hello`;
/// a mismatch stops the runner with a clear message instead of a reconnect loop.
pub const PROTOCOL_VERSION: u32 = 1;

/// The WebSocket subprotocol the runner offers, so proxies and logs can tell the
/// traffic apart and a server can refuse an incompatible runner at the upgrade.
pub const SUBPROTOCOL: &str = "fyn-runner.v1";

/// The path of the runner endpoint on a control plane.
pub const RUNNER_PATH: &str = "/runner/v1";
