//! How mimalloc gives freed memory back to the OS.
//!
//! A slave's memory is mostly media: every part of every stream's window is allocated once,
//! held for about ten seconds and freed, at 0.8 MB/s per 6.4 Mbit/s stream. With mimalloc's
//! defaults, freed media stayed in the process: with ten such streams the slave's RSS was
//! 140 MiB for 76 MiB of media held (bench section 7). Three defaults did it:
//! - arenas committed up front (`arena_eager_commit`), whose freed pages are then only reset,
//!   not decommitted, and stay resident;
//! - transparent huge pages allowed (`allow_thp`), so one live part keeps 2 MiB resident;
//! - freed pages purged a second later (`purge_delay`): ten streams free 8 MB a second. Now
//!   100 ms: at once (0) saved 1.8 MiB more in the bench, but would also return the small
//!   pages requests churn through under load, one `madvise` each.
//!
//! mimalloc reads these from the environment when the process starts, before `main`: by then
//! the first arena is reserved, committed and open to huge pages, and `mi_option_set` no longer
//! changes it (set that way, RSS was still 130 MiB). So the binary runs itself again once with
//! the `MIMALLOC_*` variables set. A variable the operator set is left as it is; if the
//! executable cannot be run again, the options are set in-process, which still shortens the
//! purge delay.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;

use libmimalloc_sys::{mi_option_set, mi_option_t};

// mimalloc 3.x's `mi_option_e` (include/mimalloc.h); `libmimalloc-sys` builds v3 unless its `v2`
// feature is on, and names only some of them.
// The test below checks these against the built library's defaults.
const ARENA_EAGER_COMMIT: mi_option_t = 4;
const PURGE_DELAY: mi_option_t = 15;
const ALLOW_THP: mi_option_t = 43;

const SETTINGS: [(mi_option_t, &str, i64); 3] = [
    (ARENA_EAGER_COMMIT, "MIMALLOC_ARENA_EAGER_COMMIT", 0),
    (ALLOW_THP, "MIMALLOC_ALLOW_THP", 0),
    (PURGE_DELAY, "MIMALLOC_PURGE_DELAY", 100),
];

pub fn return_freed_memory() {
    let missing: Vec<_> = SETTINGS
        .iter()
        .filter(|(_, env, _)| std::env::var_os(env).is_none())
        .collect();
    if missing.is_empty() {
        return;
    }
    if let Ok(exe) = std::env::current_exe() {
        let mut args = std::env::args_os();
        let mut cmd = std::process::Command::new(exe);
        cmd.arg0(args.next().unwrap_or_else(|| OsString::from("classcast")));
        cmd.args(args);
        for (_, env, value) in &missing {
            cmd.env(env, value.to_string());
        }
        // Only returns if the exec failed.
        let err = cmd.exec();
        eprintln!(
            "classcast: could not run itself again with mimalloc's options ({err}); going on"
        );
    }
    for (option, _, value) in missing {
        // SAFETY: sets a plain integer option; mimalloc reads options atomically.
        unsafe { mi_option_set(*option, *value as _) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libmimalloc_sys::mi_option_get;

    /// The option numbers above are mimalloc's: its defaults for them on Linux are 2 (commit
    /// arenas where the OS overcommits), 1,000 ms and 1. A shifted enum reads something else.
    #[test]
    fn option_numbers_are_mimallocs() {
        for (option, env, default) in [
            (ARENA_EAGER_COMMIT, "MIMALLOC_ARENA_EAGER_COMMIT", 2),
            (PURGE_DELAY, "MIMALLOC_PURGE_DELAY", 1000),
            (ALLOW_THP, "MIMALLOC_ALLOW_THP", 1),
        ] {
            if std::env::var_os(env).is_none() {
                // SAFETY: reads a plain integer option.
                assert_eq!(unsafe { mi_option_get(option) } as i64, default, "{env}");
            }
        }
    }
}
