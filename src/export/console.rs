//! The console sink: prints each call, for running without a Trodo account.

use std::io::Write;

use super::IngestCall;

/// Prints every call as one line `trodo: POST <path> <json>` on standard output.
#[derive(Debug, Default)]
pub(crate) struct ConsoleSink;

impl ConsoleSink {
    /// Prints one call; a closed standard output is ignored.
    pub(crate) fn deliver(&self, call: &IngestCall) {
        let line = format!("trodo: POST {} {}\n", call.path(), call.body());
        let _ = std::io::stdout().lock().write_all(line.as_bytes());
    }
}
