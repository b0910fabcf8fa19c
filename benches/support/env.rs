//! Bench settings from the environment; shared by the benches through
//! `#[path = "support/env.rs"] mod env;`.

/// The positive number in `name`, else `default` (unset, not a number, or 0).
pub(crate) fn positive(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|v| *v > 0)
        .unwrap_or(default)
}

/// Whether the layer stays on: anything but `name=false`.
pub(crate) fn layer_enabled(name: &str) -> bool {
    std::env::var(name).as_deref() != Ok("false")
}
