//! How the process keeps its memory between training steps.
//!
//! A step allocates and frees the same large buffers every time (activations of tens of MiB,
//! their gradients, the convolutions' outputs). glibc serves each such buffer with a fresh
//! `mmap` and returns it with `munmap` on free, so every step faults every page in again; a
//! page first read (a `+=` into a zeroed buffer maps the shared zero page) and then written
//! faults twice and flushes the other cores' TLBs by interrupt. Profiled on the benchmark step
//! (2-core EPYC VM, `perf record -e cpu-clock`), that kernel work was about a third of the
//! step's time: `native_write_msr` 16 %, `smp_call_function_many_cond` 7 %, page faults 4 %.
//!
//! [`keep_freed_memory`] tells glibc to serve large blocks from its heap and not to give freed
//! memory back (below a trim threshold of 2 GiB), so that the second step onward reuses the
//! first step's pages. The peak resident memory is unchanged (it is the largest step's working
//! set either way). glibc's per-thread arenas still `mmap` single blocks above 64 MiB.

//!
//! [`reexec_with_huge_pages`] starts the process again, once, with glibc's
//! `glibc.malloc.hugetlb=1` tunable where transparent huge pages are given only to memory
//! that asks for them (`madvise`, Debian's default): glibc then asks for them for its heaps,
//! and the step's activations, tens of MiB each, sit on 2 MiB pages instead of 4 KiB ones
//! (fewer TLB misses on every pass over them). resnet-mini's step on a 2-core Xeon VM: 0.985
//! of its time without (`bench/ab-dirs`, both orders). `LATENT_HUGE_PAGES=0` turns it off.

/// The value `GLIBC_TUNABLES` should have for glibc to back its heaps with huge pages, if the
/// process should start again with it: none where the user turned it off (`opt_out` "0"),
/// where the tunables already name `glibc.malloc.hugetlb`, or where the kernel's mode (the
/// contents of `/sys/kernel/mm/transparent_hugepage/enabled`) is not `madvise` (with
/// `always` every large mapping gets them already, with `never` none can).
pub fn huge_page_tunables(
    tunables: Option<&str>,
    thp_mode: &str,
    opt_out: Option<&str>,
) -> Option<String> {
    if opt_out == Some("0")
        || !thp_mode.contains("[madvise]")
        || tunables.is_some_and(|t| t.contains("glibc.malloc.hugetlb"))
    {
        return None;
    }
    Some(match tunables {
        Some(t) if !t.is_empty() => format!("{t}:glibc.malloc.hugetlb=1"),
        _ => "glibc.malloc.hugetlb=1".to_string(),
    })
}

/// Replaces the process with itself, same arguments, `GLIBC_TUNABLES` set as
/// [`huge_page_tunables`] says, when it says so; returns if not, or if the new start fails
/// (the process then goes on as it is). Call it first thing in `main`, before any thread or
/// allocation that matters. Linux with glibc only.
pub fn reexec_with_huge_pages() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;
        let mode = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .unwrap_or_default();
        let tunables = std::env::var("GLIBC_TUNABLES").ok();
        let opt_out = std::env::var("LATENT_HUGE_PAGES").ok();
        let Some(value) = huge_page_tunables(tunables.as_deref(), &mode, opt_out.as_deref()) else {
            return;
        };
        let Ok(exe) = std::env::current_exe() else { return };
        // exec returns only on failure; the process then goes on without huge pages
        let _ = std::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .env("GLIBC_TUNABLES", value)
            .exec();
    }
}

/// The glibc tunables and environment variables that set what [`keep_freed_memory`] sets: when
/// the user gave any of them, theirs stand.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const USER_SETTINGS: [&str; 6] = [
    "glibc.malloc.mmap_max",
    "glibc.malloc.mmap_threshold",
    "glibc.malloc.trim_threshold",
    "MALLOC_MMAP_MAX_",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
];

/// Did the user set one of [`USER_SETTINGS`] (a tunable in `GLIBC_TUNABLES`, or the variable)?
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn user_set_malloc() -> bool {
    let tunables = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
    USER_SETTINGS.iter().any(|k| {
        tunables.contains(k) || (k.starts_with("MALLOC_") && std::env::var_os(k).is_some())
    })
}

/// Serves large allocations from the heap and keeps freed memory for reuse
/// (`mallopt(M_MMAP_MAX, 0)`, `mallopt(M_TRIM_THRESHOLD, 2 GiB)`), for the whole process: the
/// host and every plugin library share glibc's allocator. Left alone where the user set one of
/// these through `GLIBC_TUNABLES` or `MALLOC_*_` variables, and on targets without glibc.
/// Returns whether the settings were applied.
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if user_set_malloc() {
            return false;
        }
        // SAFETY: mallopt only changes allocator parameters; it is safe to call at any time.
        unsafe {
            libc::mallopt(libc::M_MMAP_MAX, 0) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    false
}

#[cfg(test)]
mod tests {
    /// The tunable is added only in `madvise` mode, kept beside the user's own tunables, and
    /// never twice (a started-again process does not start again) or against the user's
    /// `LATENT_HUGE_PAGES=0`.
    #[test]
    fn huge_pages_are_asked_for_once_and_only_in_madvise_mode() {
        use super::huge_page_tunables as t;
        let madvise = "always [madvise] never\n";
        assert_eq!(t(None, madvise, None).as_deref(), Some("glibc.malloc.hugetlb=1"));
        assert_eq!(t(Some(""), madvise, None).as_deref(), Some("glibc.malloc.hugetlb=1"));
        assert_eq!(
            t(Some("glibc.malloc.arena_max=2"), madvise, Some("1")).as_deref(),
            Some("glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1")
        );
        assert_eq!(t(Some("glibc.malloc.hugetlb=1"), madvise, None), None);
        assert_eq!(t(Some("glibc.malloc.hugetlb=0"), madvise, None), None);
        assert_eq!(t(None, madvise, Some("0")), None);
        assert_eq!(t(None, "[always] madvise never", None), None);
        assert_eq!(t(None, "always madvise [never]", None), None);
        assert_eq!(t(None, "", None), None);
    }

    /// glibc takes both settings (mallopt answers 1), and large blocks still allocate and
    /// free as before; the user's own settings in the environment are left alone.
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_takes_the_settings_unless_the_user_set_them() {
        assert_eq!(super::keep_freed_memory(), !super::user_set_malloc());
        for _ in 0..3 {
            let v = vec![1.0f32; 16 << 20]; // 64 MiB, above any mmap threshold
            assert!(v[0] == 1.0 && v[v.len() - 1] == 1.0);
        }
    }
}
