pub mod core;
pub mod hardware;
