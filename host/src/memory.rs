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
