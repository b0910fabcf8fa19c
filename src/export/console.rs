//! The console sink: prints each call, for running without a Trodo account.

use std::io::Write;

/// Prints every call as one line `trodo: POST <path> <json>` on standard output.
#[derive(Debug, Default)]
pub(crate) struct ConsoleSink;

impl ConsoleSink {
    /// Prints one call; a closed standard output is ignored.
    pub(crate) fn deliver(&self, path: &str, body: &[u8]) {
        let _ = std::io::stdout().lock().write_all(&line(path, body));
    }
}

/// The printed line of one call.
fn line(path: &str, body: &[u8]) -> Vec<u8> {
    let mut line = format!("trodo: POST {path} ").into_bytes();
    line.extend_from_slice(body);
    line.push(b'\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_with_path_and_body() {
        assert_eq!(
            line("/api/sdk/runs/x/end", br#"{"status":"ok"}"#),
            b"trodo: POST /api/sdk/runs/x/end {\"status\":\"ok\"}\n"
        );
    }
}
