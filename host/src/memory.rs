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
//! [`keep_freed_memory`] tells glibc to serve large blocks from its heap and never to give
//! freed memory back, so that the second step onward reuses the first step's pages. The
//! peak resident memory is unchanged (it is the largest step's working set either way).

/// Serves large allocations from the heap and keeps freed memory for reuse
/// (`mallopt(M_MMAP_MAX, 0)`, `mallopt(M_TRIM_THRESHOLD, ∞)`), for the whole process: the
/// host and every plugin library share glibc's allocator. Left alone where `GLIBC_TUNABLES`
/// already sets a `glibc.malloc` tunable, and on targets without glibc. Returns whether the
/// settings were applied.
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("glibc.malloc")) {
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
    /// free as before; a `glibc.malloc` tunable in the environment is left alone.
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_takes_the_settings_unless_tunables_say_otherwise() {
        let tunables = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
        assert_eq!(super::keep_freed_memory(), !tunables.contains("glibc.malloc"));
        for _ in 0..3 {
            let v = vec![1.0f32; 16 << 20]; // 64 MiB, above any mmap threshold
            assert!(v[0] == 1.0 && v[v.len() - 1] == 1.0);
        }
    }
}
