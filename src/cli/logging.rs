//! The process's log: `RUST_LOG` (else the command's default) to standard error, in
//! colour only for a person at a terminal, or to a file for the Windows service; the
//! wire libraries capped at info whatever `RUST_LOG` asks. Must not: log anything
//! itself; what is logged is each part's.

use anyhow::Context as _;

use crate::config::LogFormat;

pub(super) fn init_logging(format: LogFormat, default_filter: &str) {
    let writer = tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stderr);
    let colours = colours_wanted(
        std::io::IsTerminal::is_terminal(&std::io::stderr()),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    install_logging(format, default_filter, writer, colours);
}

/// Colours only for a person at a terminal: not in a file, a pipe or the journal (their
/// escape codes would be noise there), and not when `NO_COLOR` is set to anything but
/// the empty string (<https://no-color.org>).
fn colours_wanted(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(std::ffi::OsStr::is_empty)
}

/// Log to `file` (appending, created with its folder): for the Windows service, which
/// has no console.
pub(super) fn init_file_logging(
    format: LogFormat,
    default_filter: &str,
    file: &std::path::Path,
) -> anyhow::Result<()> {
    use crate::platform::{self, Access};
    if let Some(folder) = file.parent().filter(|f| !f.as_os_str().is_empty()) {
        platform::create_dir_all(folder, Access::Readable)
            .with_context(|| format!("creating the log folder {}", folder.display()))?;
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .with_context(|| format!("opening the log file {}", file.display()))?;
    let writer = tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::sync::Mutex::new(log));
    install_logging(format, default_filter, writer, false);
    Ok(())
}

/// The subscriber: `RUST_LOG` (else `default_filter`), with the libraries that see
/// what crosses the wire capped whatever `RUST_LOG` says (see [`wire_library_caps`]).
fn install_logging(
    format: LogFormat,
    default_filter: &str,
    writer: tracing_subscriber::fmt::writer::BoxMakeWriter,
    ansi: bool,
) {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::filter::FilterExt as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(ansi);
    let layer = match format {
        LogFormat::Text => layer.boxed(),
        LogFormat::Json => layer.json().boxed(),
    };
    // A second initialisation (tests calling in) is harmless; ignore it.
    let _ = tracing_subscriber::registry()
        .with(layer.with_filter(filter.and(wire_library_caps())))
        .try_init();
}

/// The WebSocket, TLS and HTTP libraries log frames, headers and records at debug and
/// trace — tokens, signatures and job environments among them. They are capped at
/// info for every `RUST_LOG` (a filter of its own, so no `RUST_LOG` directive, however
/// specific its target, can lift it); their warnings and errors still show.
fn wire_library_caps() -> tracing_subscriber::filter::Targets {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    const WIRE_LIBRARIES: [&str; 10] = [
        "tungstenite",
        "tokio_tungstenite",
        "rustls",
        "tokio_rustls",
        "hyper",
        "hyper_util",
        "h2",
        "axum",
        "tower",
        "tower_http",
    ];
    Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_targets(WIRE_LIBRARIES.map(|target| (target, LevelFilter::INFO)))
}

#[cfg(test)]
mod tests {
    use super::colours_wanted;

    #[test]
    fn colours_only_at_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(colours_wanted(true, None));
        assert!(colours_wanted(true, Some(OsStr::new(""))));
        assert!(!colours_wanted(true, Some(OsStr::new("1"))));
        assert!(!colours_wanted(false, None));
        assert!(!colours_wanted(false, Some(OsStr::new(""))));
    }
}
