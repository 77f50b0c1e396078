//! The runner against the document. Everything here is built from the words of
//! `docs/protocol.md`, never from `src/protocol/` or the dev-server: the message tables
//! as data (`doc`), both decoders checked against them field by field (`decoding`) and
//! fuzzed (`fuzz`), and a fake control plane that speaks hand-written JSON frames to the
//! real runner (`api`, `runner`) for the cases that need a live session.
//!
//! Adding a case: start a `FakeApi`, a `Runner` (the binary, or in-process for fast
//! timers), `accept` its connection, script the server's side with `send`/`expect`/
//! `handshake`, then assert on frames (`expect`), close codes (`expect_close`), how the
//! TCP connection ended (`end`) and the exit code (`Runner::exit_code`).

mod api;
mod closing;
mod commands;
mod decoding;
mod doc;
mod drain;
mod fuzz;
mod heartbeats;
mod indexes;
mod optional;
mod registration;
mod runner;
mod stops;
