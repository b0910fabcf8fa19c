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
pub(crate) fn spawn(worker: Worker) -> Result<tokio::runtime::Handle, Box<Worker>> {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            tracing::warn!(error = %err, "trodo: no runtime for the delivery thread");
            return Err(Box::new(worker));
        }
    };
    let handle = runtime.handle().clone();
    // The worker is handed over only once the thread exists.
    let (hand_over, handed) = std::sync::mpsc::sync_channel::<Worker>(1);
    let spawned = std::thread::Builder::new()
        .name(THREAD_NAME.to_owned())
        .spawn(move || {
            if let Ok(worker) = handed.recv() {
                runtime.block_on(worker.run());
            }
        });
    match spawned {
        Ok(_) => {
            // The receiver waits for exactly this one send.
            let _ = hand_over.send(worker);
            Ok(handle)
        }
        Err(err) => {
            tracing::warn!(error = %err, "trodo: no delivery thread");
            Err(Box::new(worker))
        }
    }
}
