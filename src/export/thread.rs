//! The thread delivery runs on.

use super::Worker;

/// The name of the delivery thread, as `top -H` and profilers show it.
pub(crate) const THREAD_NAME: &str = "trodo-export";

/// Runs `worker` on a thread of its own with a single-threaded Tokio
/// runtime, so that batching, TLS and the HTTP calls to the ingest API
/// never take a turn on the server's workers (the way OpenTelemetry's batch
/// span processor runs). The thread ends when the worker does: after a
/// shutdown, or a bounded drain once every handle on it is gone.
///
/// Returns the thread's runtime, on which other background work of the
/// layer may run while delivery does; or the worker back if the thread or
/// its runtime cannot be made (the caller then runs it on its own runtime).
/// A worker whose loop panicked (see [`Worker::run`]) keeps the thread
/// until shutdown or until every handle is gone, for that other work.
pub(crate) fn spawn(worker: Worker) -> Result<tokio::runtime::Handle, Box<Worker>> {
    // The runtime is made on the new thread and stays there: dropped on
    // the caller's (inside `#[tokio::main]`, say), a runtime panics.
    let (report, reported) = std::sync::mpsc::sync_channel(1);
    // The worker is handed over only once the thread and its runtime exist.
    let (hand_over, handed) = std::sync::mpsc::sync_channel::<Worker>(1);
    let spawned = std::thread::Builder::new()
        .name(THREAD_NAME.to_owned())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            let _ = report.send(
                runtime
                    .as_ref()
                    .map(|r| r.handle().clone())
                    .map_err(|e| e.to_string()),
            );
            if let (Ok(runtime), Ok(worker)) = (runtime, handed.recv()) {
                runtime.block_on(worker.run());
            }
        });
    if let Err(err) = spawned {
        tracing::warn!(error = %err, "trodo: no delivery thread");
        return Err(Box::new(worker));
    }
    match reported.recv() {
        Ok(Ok(handle)) => {
            // The thread waits for exactly this one send.
            let _ = hand_over.send(worker);
            Ok(handle)
        }
        Ok(Err(error)) => {
            tracing::warn!(%error, "trodo: no runtime for the delivery thread");
            Err(Box::new(worker))
        }
        Err(_) => Err(Box::new(worker)),
    }
}
