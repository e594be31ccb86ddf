//! Data-parallel training across processes: `mpirun -np N latent train CONFIG` runs N ranks
//! over MPI (the `mpi` cargo feature, through the `mpi` crate). Without the feature, or
//! outside `mpirun`, the world is this one process and every collective is a no-op.
//!
//! What a step exchanges (docs/ARCHITECTURE.md, "Data-parallel training", says why):
//! ```text
//! all_gather   encoder features [V·B/N, D] per rank  → the global [V·B, D] on every rank
//!              (and the target encoder's, when the objective has one and it differs)
//! all_reduce   the encoder's parameter gradients, SUM (the objective's heads see the global
//!              batch on every rank, so their gradients agree without communication)
//! all_reduce   one i32, MAX: a rank that received a signal stops every rank after this step
//! sync BN      per batch-norm layer, Σx/Σx²/count forward and Σg/Σg·x̂ backward (opt-in)
//! ```
//! Every call is counted ([`World::take_traffic`]): `metrics.jsonl` gets `comm_s` and
//! `comm_bytes` per step.
//!
//! MPI is called by one thread at a time (`MPI_THREAD_SERIALIZED`): the training thread, or
//! a worker of a plugin's thread pool that runs the encoder's forward while the training
//! thread waits for it (the resnet's synchronised batch norm calls [`sync_all_reduce`] there).

use anyhow::{bail, Result};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// The ranks of this run.
#[derive(Debug)]
pub struct World {
    rank: usize,
    size: usize,
    /// Ranks on this machine (they share its cores).
    local: usize,
    bytes: AtomicU64,
    nanos: AtomicU64,
}

static WORLD: OnceLock<World> = OnceLock::new();

#[cfg(feature = "mpi")]
thread_local! {
    /// MPI stays initialised while this lives; [`finalize`] drops it.
    static UNIVERSE: std::cell::RefCell<Option<mpi::environment::Universe>> =
        const { std::cell::RefCell::new(None) };
}

/// The world size `mpirun` (OpenMPI, or an MPICH / PMI launcher) announces to this process,
/// if it started it.
pub fn launched_size() -> Option<usize> {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"]
        .iter()
        .find_map(|k| std::env::var(k).ok()?.parse().ok())
}

/// Joins the ranks when `mpirun` started this process (and the binary has the `mpi`
/// feature); otherwise the world is this process alone. Call once, on the training thread,
/// before any other thread starts MPI work.
pub fn init() -> Result<&'static World> {
    if let Some(w) = WORLD.get() {
        return Ok(w);
    }
    let launched = launched_size().filter(|&n| n > 1);
    #[cfg(not(feature = "mpi"))]
    refuse_without_mpi(launched)?;
    #[cfg(feature = "mpi")]
    if launched.is_some() {
        use mpi::traits::*;
        // the ranks on one machine share its cores: each rank's thread pools (the host's and
        // every plugin's, which read this when they start) take its share, unless the user
        // chose; set before MPI starts threads of its own
        let local_env = ["OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "PMI_LOCAL_SIZE"]
            .iter()
            .find_map(|k| std::env::var(k).ok()?.parse::<usize>().ok());
        if let (Some(local), None) = (local_env, std::env::var_os("RAYON_NUM_THREADS")) {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            std::env::set_var("RAYON_NUM_THREADS", (cores / local.max(1)).max(1).to_string());
        }
        let Some((universe, granted)) = mpi::initialize_with_threading(mpi::Threading::Serialized)
        else {
            bail!("MPI was already initialised in this process");
        };
        if granted < mpi::Threading::Serialized {
            bail!("this MPI library grants thread level {granted:?}; latent needs Serialized (MPI_THREAD_SERIALIZED): a plugin's worker thread calls the all-reduce of synchronised batch norm");
        }
        let world = universe.world();
        let local = world.split_shared(0).size() as usize;
        let w = World {
            rank: world.rank() as usize,
            size: world.size() as usize,
            local,
            bytes: AtomicU64::new(0),
            nanos: AtomicU64::new(0),
        };
        UNIVERSE.with(|u| *u.borrow_mut() = Some(universe));
        return Ok(WORLD.get_or_init(|| w));
    }
    Ok(world())
}

/// A binary without the `mpi` feature that `mpirun` started as one of N > 1 ranks would train
/// N separate copies into one run directory: refused.
#[cfg_attr(feature = "mpi", allow(dead_code))]
fn refuse_without_mpi(launched: Option<usize>) -> Result<()> {
    if let Some(n) = launched.filter(|&n| n > 1) {
        bail!(
            "started by mpirun as one of {n} ranks, but this latent was built without the `mpi` feature, so the ranks would train {n} separate copies into one run directory; rebuild with `cargo build --release -p latent-host --features mpi` (docs/ARCHITECTURE.md, \"Data-parallel training\")"
        );
    }
    Ok(())
}

/// The world: [`init`]'s, or this process alone when [`init`] was not called.
pub fn world() -> &'static World {
    WORLD.get_or_init(|| World {
        rank: 0,
        size: 1,
        local: 1,
        bytes: AtomicU64::new(0),
        nanos: AtomicU64::new(0),
    })
}

/// Leaves MPI (after the last collective; a no-op in one process).
pub fn finalize() {
    #[cfg(feature = "mpi")]
    UNIVERSE.with(|u| drop(u.borrow_mut().take()));
}

#[cfg(feature = "mpi")]
fn comm() -> mpi::topology::SimpleCommunicator {
    mpi::topology::SimpleCommunicator::world()
}

impl World {
    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The number of ranks.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Rank 0: the one that writes the run directory.
    pub fn is_root(&self) -> bool {
        self.rank == 0
    }

    /// More than one rank.
    pub fn is_distributed(&self) -> bool {
        self.size > 1
    }

    /// Threads this rank should use: `RAYON_NUM_THREADS` when set, else the machine's cores
    /// shared among its ranks.
    pub fn threads(&self) -> usize {
        if let Some(n) = std::env::var("RAYON_NUM_THREADS").ok().and_then(|v| v.parse().ok()) {
            return std::cmp::max(n, 1);
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        (cores / self.local.max(1)).max(1)
    }

    /// The collective plugins see in their [`latent_abi::Context`] (none in one process).
    pub fn collective(&self) -> Option<latent_abi::Collective> {
        self.is_distributed().then_some(latent_abi::Collective {
            rank: self.rank as u32,
            world: self.size as u32,
            all_reduce_sum: sync_all_reduce,
        })
    }

    #[cfg_attr(not(feature = "mpi"), allow(dead_code))]
    fn count(&self, bytes: usize, t: Instant) {
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        self.nanos.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }

    /// Bytes this rank sent and seconds it spent in collectives since the last call.
    pub fn take_traffic(&self) -> (u64, f64) {
        let b = self.bytes.swap(0, Ordering::Relaxed);
        let n = self.nanos.swap(0, Ordering::Relaxed);
        (b, n as f64 * 1e-9)
    }

    /// Every rank's `local` (equal lengths), concatenated in rank order.
    pub fn all_gather(&self, local: &[f32]) -> Vec<f32> {
        if !self.is_distributed() {
            return local.to_vec();
        }
        #[cfg(feature = "mpi")]
        {
            use mpi::traits::*;
            let t = Instant::now();
            let mut out = vec![0f32; local.len() * self.size];
            comm().all_gather_into(local, &mut out[..]);
            self.count(std::mem::size_of_val(local), t);
            out
        }
        #[cfg(not(feature = "mpi"))]
        unreachable!("a world of {} ranks without the mpi feature", self.size)
    }

    /// Element-wise sum over the ranks, in place.
    pub fn all_reduce_sum(&self, buf: &mut [f32]) {
        self.reduce(buf, Op::Sum)
    }

    /// Element-wise sum over the ranks, in place (f64).
    pub fn all_reduce_sum_f64(&self, buf: &mut [f64]) {
        self.reduce(buf, Op::Sum)
    }

    /// The largest `v` over the ranks.
    pub fn max_i32(&self, v: i32) -> i32 {
        let mut b = [v];
        self.reduce(&mut b, Op::Max);
        b[0]
    }

    /// Every rank's `v`, in rank order.
    pub fn gather_u64(&self, v: u64) -> Vec<u64> {
        if !self.is_distributed() {
            return vec![v];
        }
        #[cfg(feature = "mpi")]
        {
            use mpi::traits::*;
            let t = Instant::now();
            let mut out = vec![0u64; self.size];
            comm().all_gather_into(&v, &mut out[..]);
            self.count(8, t);
            out
        }
        #[cfg(not(feature = "mpi"))]
        unreachable!("a world of {} ranks without the mpi feature", self.size)
    }

    /// Rank 0's `s`, on every rank.
    pub fn broadcast_string(&self, s: &str) -> String {
        if !self.is_distributed() {
            return s.to_string();
        }
        #[cfg(feature = "mpi")]
        {
            use mpi::traits::*;
            let t = Instant::now();
            let world = comm();
            let root = world.process_at_rank(0);
            let mut len = s.len() as u64;
            root.broadcast_into(&mut len);
            let mut bytes =
                if self.is_root() { s.as_bytes().to_vec() } else { vec![0u8; len as usize] };
            root.broadcast_into(&mut bytes[..]);
            self.count(8 + bytes.len(), t);
            String::from_utf8_lossy(&bytes).into_owned()
        }
        #[cfg(not(feature = "mpi"))]
        unreachable!("a world of {} ranks without the mpi feature", self.size)
    }

    /// Waits for every rank.
    pub fn barrier(&self) {
        #[cfg(feature = "mpi")]
        if self.is_distributed() {
            use mpi::traits::*;
            comm().barrier();
        }
    }

    /// Ends every rank's process with `code` (MPI_Abort); in one process, exits.
    pub fn abort(&self, code: i32) -> ! {
        #[cfg(feature = "mpi")]
        if self.is_distributed() {
            use mpi::traits::*;
            comm().abort(code);
        }
        std::process::exit(code)
    }

    #[cfg(feature = "mpi")]
    fn reduce<T: Copy + mpi::datatype::Equivalence>(&self, buf: &mut [T], op: Op) {
        use mpi::collective::SystemOperation;
        use mpi::traits::*;
        if !self.is_distributed() {
            return;
        }
        let t = Instant::now();
        let send = buf.to_vec();
        let op = match op {
            Op::Sum => SystemOperation::sum(),
            Op::Max => SystemOperation::max(),
        };
        comm().all_reduce_into(&send[..], buf, op);
        self.count(std::mem::size_of_val(buf), t);
    }

    #[cfg(not(feature = "mpi"))]
    fn reduce<T>(&self, _buf: &mut [T], _op: Op) {
        assert!(!self.is_distributed(), "a world of {} ranks without the mpi feature", self.size);
    }
}

enum Op {
    Sum,
    Max,
}

/// The all-reduce the host lends plugins ([`latent_abi::Collective::all_reduce_sum`]).
pub extern "C" fn sync_all_reduce(data: abi_stable::std_types::RSliceMut<'_, f64>) -> bool {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        world().all_reduce_sum_f64(data.into_mut_slice())
    }))
    .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_process_is_a_world_of_one_whose_collectives_change_nothing() {
        let w = world();
        assert_eq!((w.rank(), w.size(), w.is_root(), w.is_distributed()), (0, 1, true, false));
        assert_eq!(w.all_gather(&[1.0, 2.0]), vec![1.0, 2.0]);
        let mut b = [1.5f32, -2.0];
        w.all_reduce_sum(&mut b);
        assert_eq!(b, [1.5, -2.0]);
        assert_eq!(w.max_i32(7), 7);
        assert_eq!(w.gather_u64(9), vec![9]);
        assert!(w.collective().is_none());
        assert_eq!(w.take_traffic().0, 0);
    }

    #[test]
    fn a_binary_without_mpi_started_as_several_ranks_is_refused_saying_how_to_rebuild() {
        let e = refuse_without_mpi(Some(2)).unwrap_err().to_string();
        assert!(e.contains("one of 2 ranks") && e.contains("--features mpi"), "{e}");
        assert!(refuse_without_mpi(Some(1)).is_ok() && refuse_without_mpi(None).is_ok());
    }
}
