//! Micro benchmarks of the layer's hot pieces, with divan:
//! `cargo bench --features bench-internals --bench micro`.
//!
//! - the JSON-RPC envelope peek of every request and of every SSE event;
//! - SSE decoding of an rmcp answer, and of a large event;
//! - the bounded capture of a request body, and of a body past the limit;
//! - the serialisation of a span for delivery;
//! - the idle sweep of a table of 100,000 sessions of which 100 expired.

use divan::counter::BytesCount;
use divan::{Bencher, black_box};
use trodo_tower::__bench::{self as internals, IdleTable, SampleSpan};

fn main() {
    divan::main();
}

/// The capture limit of the default config, in characters.
const CAPTURE_LIMIT: usize = 64_000;

const TOOLS_CALL: &[u8] = br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"add","arguments":{"a":7,"b":2}}}"#;
const INITIALIZE: &[u8] = br#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"bench","version":"1"}}}"#;
const TOOL_RESULT: &[u8] = br#"{"jsonrpc":"2.0","id":7,"result":{"content":[{"type":"text","text":"9"}],"isError":false}}"#;
/// rmcp's SSE answer to a `tools/call`: the priming event, then the result.
const RMCP_ANSWER: &[u8] = b"data: \nid: 0/0\nretry: 3000\n\ndata: {\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{\"content\":[{\"type\":\"text\",\"text\":\"9\"}],\"isError\":false}}\nid: 7/0\n\n";

mod envelope {
    use super::*;

    #[divan::bench]
    fn request_tools_call(bencher: Bencher<'_, '_>) {
        bencher.bench(|| internals::peek_request(black_box(TOOLS_CALL)));
    }

    #[divan::bench]
    fn request_initialize(bencher: Bencher<'_, '_>) {
        bencher.bench(|| internals::peek_request(black_box(INITIALIZE)));
    }

    #[divan::bench]
    fn response_tool_result(bencher: Bencher<'_, '_>) {
        bencher.bench(|| internals::peek_response(black_box(TOOL_RESULT)));
    }
}

mod sse {
    use super::*;

    #[divan::bench]
    fn rmcp_answer(bencher: Bencher<'_, '_>) {
        bencher
            .counter(BytesCount::of_slice(RMCP_ANSWER))
            .bench(|| internals::decode_sse([black_box(RMCP_ANSWER)], CAPTURE_LIMIT * 4));
    }

    /// One 1 MB event in 16 KiB chunks: most of it past the limit.
    #[divan::bench]
    fn large_event_1mb(bencher: Bencher<'_, '_>) {
        let mut stream = b"data: ".to_vec();
        stream.resize(1 << 20, b'x');
        stream.extend_from_slice(b"\n\n");
        bencher.counter(BytesCount::of_slice(&stream)).bench(|| {
            internals::decode_sse(black_box(&stream).chunks(16 * 1024), CAPTURE_LIMIT * 4)
        });
    }
}

mod capture {
    use super::*;

    #[divan::bench]
    fn request_body(bencher: Bencher<'_, '_>) {
        bencher
            .counter(BytesCount::of_slice(TOOLS_CALL))
            .bench(|| internals::capture([black_box(TOOLS_CALL)], CAPTURE_LIMIT));
    }

    /// A 1 MB body in 16 KiB chunks: the first 64,000 characters kept.
    #[divan::bench]
    fn body_1mb(bencher: Bencher<'_, '_>) {
        let body = vec![b'x'; 1 << 20];
        bencher
            .counter(BytesCount::of_slice(&body))
            .bench(|| internals::capture(black_box(&body).chunks(16 * 1024), CAPTURE_LIMIT));
    }
}

mod span {
    use super::*;

    #[divan::bench]
    fn serialise_tool_call(bencher: Bencher<'_, '_>) {
        let span = SampleSpan::tool_call();
        bencher.bench(|| black_box(&span).to_json());
    }
}

mod sweep {
    use super::*;

    /// One sweep of 100,000 open runs of which 100 are idle past the timeout.
    #[divan::bench(sample_count = 20, sample_size = 1)]
    fn idle_100k_sessions_100_expired(bencher: Bencher<'_, '_>) {
        bencher
            .with_inputs(|| IdleTable::new(100_000, 100))
            .bench_local_refs(|table| {
                let ended = table.sweep();
                assert_eq!(ended, 100);
                ended
            });
    }
}
