//! The `fyn-runner dev-server` flags, as a clap `Args` the CLI flattens.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::{DevServerConfig, TlsFiles};
use crate::protocol::SessionParams;

/// Run the reference control plane (a development tool).
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct DevServerArgs {
    /// Address to listen on, IP:PORT (port 0 picks a free port).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7480")]
    pub listen: SocketAddr,
    /// SQLite database file; without it everything lives in memory.
    #[arg(long, value_name = "PATH")]
    pub db: Option<PathBuf>,
    /// Mint one registration token at start and print `token: <t>` on stdout.
    #[arg(long)]
    pub print_token: bool,
    /// PEM certificate chain: serve wss:// and https:// (needs --tls-key).
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Heartbeat interval handed to runners, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 15_000)]
    pub heartbeat_ms: u64,
    /// How long a runner waits for any expected reply, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    pub ack_timeout_ms: u64,
    /// How long a disconnected runner keeps its jobs, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 120_000)]
    pub runner_lost_ms: u64,
    /// How long a runner connection may take to authenticate, in milliseconds,
    /// whatever it sends meanwhile.
    #[arg(long, value_name = "MS", default_value_t = super::DEFAULT_HANDSHAKE_TIMEOUT_MS)]
    pub handshake_timeout_ms: u64,
    /// The admin API's token file: used when it exists, else a fresh token is written
    /// there (0600). [default: a fresh token each start, written to
    /// $XDG_RUNTIME_DIR/fyn-runner-dev-server/admin-token-PORT (else under
    /// $XDG_STATE_HOME or ~/.local/state), where `fyn-runner ctl` finds it, and
    /// removed at exit]
    #[arg(long, value_name = "PATH", env = "FYN_RUNNER_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// A host name the admin API may be reached by, besides this server's addresses
    /// (e.g. behind a proxy, or on the network with --listen 0.0.0.0:PORT); repeat for
    /// more. Requests naming any other Host are refused, against DNS rebinding.
    #[arg(long = "allow-host", value_name = "NAME")]
    pub allowed_hosts: Vec<String>,
    /// Where job inputs and results are kept [default: <db>-blobs beside --db, or a
    /// private temporary folder removed at exit]
    #[arg(long, value_name = "DIR")]
    pub blob_dir: Option<PathBuf>,
    /// The largest job input or result accepted, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = super::DEFAULT_MAX_BLOB_BYTES)]
    pub max_blob_bytes: u64,
    /// The base URL runners reach this server at (e.g. http://build-host:7480 with
    /// --listen 0.0.0.0:7480), used in the input and result URLs jobs are handed.
    /// Requests whose Host is this URL's host and port are accepted as this server's
    /// own (as for --allow-host), so it may name a proxy in front of the server.
    /// [default: this server's own address]
    #[arg(long, value_name = "URL")]
    pub public_url: Option<String>,
}

impl From<&DevServerArgs> for DevServerConfig {
    fn from(args: &DevServerArgs) -> Self {
        let tls = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        };
        Self {
            listen: args.listen,
            db: args.db.clone(),
            tls,
            session: SessionParams {
                heartbeat_interval_ms: args.heartbeat_ms,
                ack_timeout_ms: args.ack_timeout_ms,
                runner_lost_threshold_ms: args.runner_lost_ms,
            },
            admin_token_file: args.admin_token_file.clone(),
            allowed_hosts: args.allowed_hosts.clone(),
            handshake_timeout_ms: args.handshake_timeout_ms,
            blob_dir: args.blob_dir.clone(),
            max_blob_bytes: args.max_blob_bytes,
            public_url: args.public_url.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: DevServerArgs,
    }

    #[test]
    fn defaults_match_the_session_defaults() -> Result<(), clap::Error> {
        let cli = Cli::try_parse_from(["x"])?;
        let config = DevServerConfig::from(&cli.args);
        assert_eq!(config, DevServerConfig::default());
        Ok(())
    }

    #[test]
    fn tls_needs_both_files() {
        assert!(Cli::try_parse_from(["x", "--tls-cert", "c.pem"]).is_err());
        let both = Cli::try_parse_from(["x", "--tls-cert", "c.pem", "--tls-key", "k.pem"]);
        assert!(both.is_ok_and(|cli| DevServerConfig::from(&cli.args).tls.is_some()));
    }
}
