//! CUDA C kernels run on the CPU, for tests on machines without a GPU.
//!
//! [`Emulated::compile`] compiles a kernel source (the same text NVRTC compiles) with the
//! system's C++ compiler, under a prelude that maps CUDA's few built-ins onto threads: blocks
//! run one after another, the threads of a block as `blockDim.x` OS threads, `__syncthreads()`
//! as a barrier, `__shared__` memory as one static per kernel (blocks never overlap). For every
//! `extern "C" __global__ void NAME(ARGS)` it adds `emu_NAME(grid, block, ARGS)`, which runs
//! the launch and returns when it is done; arguments are host pointers in place of device ones.
//!
//! It checks the kernels' arithmetic and indexing, block reductions included; it does not
//! model the GPU's memory, warps or timing. The `launch!` sites' argument lists are not part
//! of it: each test calls `emu_NAME` with the kernel's own signature.
//!
//! ```no_run
//! let k = latent_cuda::emulate::Emulated::compile(
//!     r#"extern "C" __global__ void twice(float* y, int n) {
//!         int i = blockIdx.x * blockDim.x + threadIdx.x; if (i < n) y[i] *= 2.0f; }"#,
//! ).unwrap();
//! let mut y = vec![1.0f32, 2.0, 3.0];
//! let twice: libloading::Symbol<unsafe extern "C" fn(u32, u32, *mut f32, i32)> =
//!     unsafe { k.get("twice") }.unwrap();
//! unsafe { twice(1, 256, y.as_mut_ptr(), 3) };
//! assert_eq!(y, [2.0, 4.0, 6.0]);
//! ```

use std::path::PathBuf;
use std::process::Command;

const PRELUDE: &str = r#"
#include <barrier>
#include <cmath>
#include <thread>
#include <vector>
struct emu_dim3 { unsigned x = 1, y = 1, z = 1; };
static thread_local emu_dim3 threadIdx, blockIdx;
static emu_dim3 blockDim, gridDim;
static std::barrier<>* emu_barrier = nullptr;
#define __global__
#define __device__ static
#define __shared__ static
static inline void __syncthreads() { emu_barrier->arrive_and_wait(); }
template <class F> static void emu_run(unsigned grid, unsigned block, F f) {
    gridDim.x = grid;
    blockDim.x = block;
    for (unsigned b = 0; b < grid; ++b) {
        std::barrier<> bar(block);
        emu_barrier = &bar;
        std::vector<std::thread> ts;
        for (unsigned t = 0; t < block; ++t)
            ts.emplace_back([=] { blockIdx.x = b; threadIdx.x = t; f(); });
        for (auto& t : ts) t.join();
    }
}
"#;

/// A kernel source compiled for the CPU.
pub struct Emulated {
    lib: libloading::Library,
    _dir: TempDir,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The `emu_NAME` wrapper of each kernel in `src`.
fn wrappers(src: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = src;
    while let Some(at) = rest.find("__global__ void ") {
        rest = &rest[at + "__global__ void ".len()..];
        let open = rest.find('(').ok_or("a kernel without parameters")?;
        let close = rest.find(')').ok_or("a kernel without a closing parenthesis")?;
        let name = rest[..open].trim();
        let params = rest[open + 1..close].split_whitespace().collect::<Vec<_>>().join(" ");
        let names: Vec<&str> = params
            .split(',')
            .map(|p| p.trim().rsplit([' ', '*']).next().unwrap_or(""))
            .filter(|n| !n.is_empty())
            .collect();
        out.push_str(&format!(
            "extern \"C\" void emu_{name}(unsigned emu_grid, unsigned emu_block{}{params}) {{ \
             emu_run(emu_grid, emu_block, [=] {{ {name}({}); }}); }}\n",
            if params.is_empty() { "" } else { ", " },
            names.join(", ")
        ));
        rest = &rest[close..];
    }
    Ok(out)
}

impl Emulated {
    /// Compiles `src` with `c++` (or `$CXX`) into a library of `emu_NAME` launchers.
    pub fn compile(src: &str) -> Result<Emulated, String> {
        static COUNT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("latent-emu-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let dir = TempDir(dir);
        let cpp = dir.0.join("kernels.cpp");
        let so = dir.0.join("kernels.so");
        let text = format!("{PRELUDE}\n{src}\n{}", wrappers(src)?);
        std::fs::write(&cpp, text).map_err(|e| format!("{}: {e}", cpp.display()))?;
        let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
        let out = Command::new(&cxx)
            .args(["-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", "-o"])
            .arg(&so)
            .arg(&cpp)
            .output()
            .map_err(|e| format!("running {cxx}: {e} (a C++20 compiler is needed)"))?;
        if !out.status.success() {
            return Err(format!("{cxx} failed:\n{}", String::from_utf8_lossy(&out.stderr)));
        }
        // SAFETY: the library was just built from the kernels and the prelude above; loading it
        // runs no initialisers beyond the C++ runtime's.
        let lib = unsafe { libloading::Library::new(&so) }.map_err(|e| e.to_string())?;
        Ok(Emulated { lib, _dir: dir })
    }

    /// The launcher of kernel `name`: `(grid blocks, threads per block, the kernel's arguments)`.
    ///
    /// # Safety
    /// `T` must be `unsafe extern "C" fn(u32, u32, ...)` with the kernel's parameter types.
    pub unsafe fn get<T>(&self, name: &str) -> Result<libloading::Symbol<'_, T>, String> {
        self.lib.get(format!("emu_{name}\0").as_bytes()).map_err(|e| format!("emu_{name}: {e}"))
    }
}

/// `n` values in [-1, 1) from a fixed generator (the kernels' tests' inputs).
pub fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Panics, naming `what` and the first index, unless every `|a − b| ≤ tol·(1 + |b|)`.
pub fn assert_close(a: &[f32], b: &[f32], tol: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= tol * (1.0 + y.abs()), "{what}[{i}]: {x} vs {y}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_reduction_runs_with_its_barriers() {
        let src = r#"
extern "C" __global__ void block_sums(float* out, const float* x, int n) {
    __shared__ float sh[64];
    sh[threadIdx.x] = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) sh[threadIdx.x] += x[blockIdx.x * n + i];
    __syncthreads();
    for (int o = 32; o > 0; o >>= 1) {
        if ((int)threadIdx.x < o) sh[threadIdx.x] += sh[threadIdx.x + o];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = sh[0];
}"#;
        let k = Emulated::compile(src).unwrap();
        let x: Vec<f32> = (0..3 * 100).map(|i| i as f32).collect();
        let mut out = vec![0.0f32; 3];
        type F = unsafe extern "C" fn(u32, u32, *mut f32, *const f32, i32);
        unsafe { k.get::<F>("block_sums").unwrap()(3, 64, out.as_mut_ptr(), x.as_ptr(), 100) };
        let want: Vec<f32> = (0..3).map(|b| (0..100).map(|i| (b * 100 + i) as f32).sum()).collect();
        assert_eq!(out, want);
    }

    #[test]
    fn wrappers_name_every_parameter() {
        let w = wrappers("extern \"C\" __global__ void f(float* y, const float* x,\n int n) {}")
            .unwrap();
        assert!(
            w.contains(
                "emu_f(unsigned emu_grid, unsigned emu_block, float* y, const float* x, int n)"
            ),
            "{w}"
        );
        assert!(w.contains("f(y, x, n);"), "{w}");
    }
}
