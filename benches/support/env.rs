//! Bench settings from the environment; shared by the benches through
//! `#[path = "support/env.rs"] mod env;`.
//!
//! A setting that is set but not understood stops the bench with a message
//! that names it: a typo must not measure something else in silence.

/// The value of `name`, if it is set (and not empty).
fn set(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// Stops the bench: `name` holds `value`, which is not `expected`.
pub(crate) fn refuse(name: &str, value: &str, expected: &str) -> ! {
    eprintln!("{name}={value:?}: expected {expected}");
    std::process::exit(2)
}

/// The whole number in `name` (0 or more), else `default` when unset.
#[allow(dead_code, reason = "not every bench has such a setting")]
pub(crate) fn whole(name: &str, default: u64) -> u64 {
    set(name).map_or(default, |v| {
        v.parse()
            .unwrap_or_else(|_| refuse(name, &v, "a whole number"))
    })
}

/// The positive whole number in `name`, else `default` when unset.
pub(crate) fn positive(name: &str, default: u64) -> u64 {
    set(name).map_or(default, |v| {
        v.parse()
            .ok()
            .filter(|n| *n > 0)
            .unwrap_or_else(|| refuse(name, &v, "a positive whole number"))
    })
}

/// One of `choices` in `name`, else `None` when unset.
pub(crate) fn choice(name: &str, choices: &[&'static str]) -> Option<&'static str> {
    let value = set(name)?;
    let found = choices.iter().copied().find(|c| *c == value);
    Some(found.unwrap_or_else(|| refuse(name, &value, &format!("one of {choices:?}"))))
}

/// Whether the layer stays on: `true` (or unset) or `false`.
pub(crate) fn layer_enabled(name: &str) -> bool {
    choice(name, &["true", "false"]) != Some("false")
}
