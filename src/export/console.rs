//! The console sink: prints each call, for running without a Trodo account.

use std::io::Write;

use super::IngestCall;

/// Prints every call as one line `trodo: POST <path> <json>` on standard output.
#[derive(Debug, Default)]
pub(crate) struct ConsoleSink;

impl ConsoleSink {
    /// Prints one call; a closed standard output is ignored.
    pub(crate) fn deliver(&self, call: &IngestCall) {
        let _ = std::io::stdout().lock().write_all(line(call).as_bytes());
    }
}

/// The printed line of one call.
fn line(call: &IngestCall) -> String {
    format!("trodo: POST {} {}\n", call.path(), call.body())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{End, RunStatus, Timestamp, Totals};
    use std::time::{Duration, SystemTime};
    use uuid::Uuid;

    #[test]
    fn one_line_with_path_and_body() {
        let run_id = Uuid::nil();
        let call = IngestCall::End {
            run_id,
            end: Box::new(End {
                ended_at: Timestamp(SystemTime::UNIX_EPOCH + Duration::from_secs(1)),
                status: RunStatus::Ok,
                output: None,
                error_summary: None,
                metadata: serde_json::Map::new(),
                totals: Totals::default(),
            }),
        };
        assert_eq!(
            line(&call),
            "trodo: POST /api/sdk/runs/00000000-0000-0000-0000-000000000000/end \
             {\"ended_at\":\"1970-01-01T00:00:01.000000Z\",\"error_count\":0,\"span_count\":0,\
             \"status\":\"ok\",\"tool_count\":0,\"total_cost\":0.0,\"total_tokens_in\":0,\
             \"total_tokens_out\":0}\n"
        );
    }
}
