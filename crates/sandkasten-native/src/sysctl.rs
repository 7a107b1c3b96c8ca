//! The host's numeric sysctls (`/proc/sys/…`) the daemon raises at start
//! for its sandboxes' budgets (`ptys.rs`, `pidmax.rs`): read, and raised
//! where lower, never lowered.

use std::path::Path;

/// The number in `file`.
pub fn read(file: &Path) -> Result<u64, String> {
    std::fs::read_to_string(file)
        .map_err(|e| format!("reading {}: {e}", file.display()))?
        .trim()
        .parse()
        .map_err(|e| format!("parsing {}: {e}", file.display()))
}

/// Writes `want` to `file` (the sysctl `name`) where it holds less; never
/// lowers it. `Ok(Some((old, new)))` when it changed it, `Ok(None)` when it
/// was high enough, `Err` with what to set when it could not.
pub fn raise(file: &Path, name: &str, want: u64) -> Result<Option<(u64, u64)>, String> {
    let now = read(file)?;
    if now >= want {
        return Ok(None);
    }
    std::fs::write(file, want.to_string()).map_err(|e| {
        format!(
            "raising {} from {now} to {want}: {e} (set the sysctl {name}={want} on the host)",
            file.display()
        )
    })?;
    Ok(Some((now, want)))
}
