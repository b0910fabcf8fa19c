//! Randomized transparency: a few hundred generated exchanges, each sent
//! through the same scripted MCP endpoint bare and behind the layer. The
//! layered one must answer the same status, headers, size hint and body
//! frames, hand the handler the same request frames, catch no panic of its
//! own, and record each exchange that makes a span exactly once, with the
//! input (and, where the model knows the answer, the output) cut from the
//! bytes that went by.
//!
//! Seeded and reproducible: `TRODO_FUZZ_SEED` picks the seed (decimal or
//! `0x` hex), `TRODO_FUZZ_CASES` how many cases, `TRODO_FUZZ_CASE` runs one
//! case alone. A failure prints the seed and the case.
//!
//! Here: the two tests, the runner that seeds and sends each case, and
//! how to run a failing one again; `generate` makes the cases' parts,
//! `case` holds one and what it should record, `exchange` sends it, and
//! `check` checks what was recorded.

mod case;
mod check;
#[path = "../common/mod.rs"]
mod common;
mod exchange;
mod generate;

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::routing::post;
use common::*;
use serde_json::Value;
use trodo_tower::TrodoLayer;

use case::Case;
use check::{check_ends, check_span};
use exchange::{exchange, scripted};
use generate::Rng;

/// The capture limit: small, so that bodies near and over it, and over the
/// four limits a JSON answer is read to, are cheap to make.
const LIMIT: usize = 96;
const DEFAULT_SEED: u64 = 0x7_20D0_F022;
const DEFAULT_CASES: usize = 600;

/// Prints how to run a failing case again.
struct Reproduce {
    seed: u64,
    case: Option<usize>,
}

impl Drop for Reproduce {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let case = self
                .case
                .map_or_else(String::new, |case| format!(" TRODO_FUZZ_CASE={case}"));
            eprintln!(
                "randomized transparency failed; run again with TRODO_FUZZ_SEED={:#x}{case}",
                self.seed
            );
        }
    }
}

fn env_number(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={text} is not a number")))
}

/// The seed of case `number` of a run seeded with `seed`.
fn case_seed(seed: u64, number: usize) -> u64 {
    Rng(seed ^ (number as u64).wrapping_mul(0xA076_1D64_78BD_642F)).next_u64()
}

#[tokio::test]
async fn generated_exchanges_pass_through_the_layer_untouched_and_are_recorded_once() {
    drive(None).await;
}

/// With a session store every exchange is read as it streams, and the
/// response heads of sessions the worker does not know wait for the store.
#[tokio::test]
async fn with_a_session_store_too() {
    drive(Some(Arc::new(trodo_tower::store::MemoryStore::new()))).await;
}

/// Generates the cases, runs each bare and layered (a layer with `store`,
/// if any), compares, and counts and checks the spans once all are sent.
async fn drive(store: Option<Arc<trodo_tower::store::MemoryStore>>) {
    let seed = env_number("TRODO_FUZZ_SEED").unwrap_or(DEFAULT_SEED);
    let numbers: Vec<usize> = match env_number("TRODO_FUZZ_CASE") {
        Some(only) => vec![only as usize],
        None => (0..env_number("TRODO_FUZZ_CASES").map_or(DEFAULT_CASES, |n| n as usize)).collect(),
    };
    let mut reproduce = Reproduce { seed, case: None };

    let ingest = RecordingIngest::start().await.unwrap();
    let config = config(&ingest)
        .with_capture_limit(LIMIT)
        .unwrap()
        .with_run_key(|parts| Some(parts.headers.get("x-case")?.to_str().ok()?.to_owned()));
    let parks = store.is_none();
    let config = match store {
        Some(store) => config.with_session_store(store),
        None => config,
    };
    let layer = TrodoLayer::new(config);
    let trodo = layer.trodo();
    let app = Router::new().route("/mcp", post(scripted).get(scripted).delete(scripted));
    let layered = app.clone().layer(layer);
    // The layer learns its MCP endpoint from the first request it reads;
    // from then on a body that is not JSON-RPC is an invalid message.
    exchange(layered.clone(), &Case::ping(usize::MAX)).await;

    let mut cases = Vec::new();
    for &number in &numbers {
        reproduce.case = Some(number);
        let case = Case::generate(&mut Rng(case_seed(seed, number)), number);
        let run = async {
            let bare = exchange(app.clone(), &case).await;
            if case.known {
                exchange(layered.clone(), &Case::ping(number)).await;
            }
            let through = exchange(layered.clone(), &case).await;
            (bare, through)
        };
        let (bare, through) = tokio::time::timeout(WAIT, run)
            .await
            .unwrap_or_else(|_| panic!("case {number} hangs: {case:#?}"));
        assert_eq!(bare, through, "case {number}: {case:#?}");
        assert_eq!(
            bare.request.concat(),
            case.request,
            "case {number}: the handler read the whole request"
        );
        assert_eq!(
            trodo.delivery_counters().panics_caught,
            0,
            "case {number}: {case:#?}"
        );
        cases.push(case);
    }
    reproduce.case = None;

    assert!(trodo.shutdown(WAIT).await, "everything delivered");
    assert_eq!(trodo.delivery_counters().panics_caught, 0);
    let runs: HashMap<String, String> = ingest
        .starts()
        .into_iter()
        .map(|run| {
            let id = run["run_id"].as_str().unwrap().to_owned();
            let conversation = run["conversation_id"].as_str().unwrap_or("").to_owned();
            (id, conversation)
        })
        .collect();
    let mut spans: HashMap<&str, Vec<Value>> = HashMap::new();
    for (run_id, span) in ingest.spans() {
        let conversation = runs.get(&run_id).map_or("", String::as_str);
        spans.entry(conversation).or_default().push(span);
    }
    for case in &cases {
        reproduce.case = Some(case.number);
        let (pings, mine): (Vec<&Value>, Vec<&Value>) = case
            .conversations()
            .iter()
            .flat_map(|c| spans.get(c.as_str()).into_iter().flatten())
            .partition(|span| span["attributes"]["jsonrpc.request.id"] == "warm-up");
        assert_eq!(pings.len(), usize::from(case.known), "case {}", case.number);
        assert_eq!(
            mine.len(),
            case.expected_spans(),
            "case {}: {mine:#?} {case:#?}",
            case.number
        );
        if let [span] = mine[..] {
            check_span(case, span, parks);
        }
    }
    reproduce.case = None;
    // A worker with a session store leaves its sessions open at shutdown
    // (README, "Shutdown and dead workers"): others may serve them.
    check_ends(&ingest, &runs, parks);
}
