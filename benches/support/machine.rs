//! The machine a bench runs on, for its report; shared by the benches
//! through `#[path = "support/machine.rs"] mod machine;`.

/// `CPU model, N cores, M GiB; rustc version`, read from `/proc` (and
/// `rustc --version`); "unknown ..." where it cannot be read. Cores
/// the process may not run on (`taskset`, a cgroup) are named apart.
pub(crate) fn describe() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or_else(|| "unknown CPU".to_owned(), |(_, v)| v.trim().to_owned());
    let cores = cores(&cpuinfo);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(format!("{:.0} GiB", kib as f64 / (1024.0 * 1024.0)))
        })
        .unwrap_or_else(|| "unknown memory".to_owned());
    let rustc = std::process::Command::new("rustc")
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    format!("{cpu}, {cores}, {memory}; {rustc}")
}

/// The machine's cores (counted in `cpuinfo`), and how many of them this
/// process may run on if fewer: "2 cores", "2 cores (1 available to this
/// process)".
fn cores(cpuinfo: &str) -> String {
    let available = std::thread::available_parallelism().map_or(0, usize::from);
    let online = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count()
        .max(available);
    let plural = if online == 1 { "core" } else { "cores" };
    if (1..online).contains(&available) {
        format!("{online} {plural} ({available} available to this process)")
    } else {
        format!("{online} {plural}")
    }
}
