//! The few collective operations data parallelism needs, over the processes of one job: one
//! process alone ([`Alone`]), or MPI ranks (feature `mpi`, `Mpi`).
//!
//! Every rank calls the same operations in the same order; rank 0 is the one that writes run
//! files. A dead rank ends the job (MPI's default error handler aborts every rank).

/// Collective operations over the ranks of a job.
pub trait Collective {
    /// This process's rank, 0..size.
    fn rank(&self) -> usize;
    /// Ranks in the job.
    fn size(&self) -> usize;
    /// Elementwise sum over ranks, in place.
    fn all_reduce_sum_f32(&self, data: &mut [f32]);
    /// Elementwise sum over ranks, in place.
    fn all_reduce_sum_f64(&self, data: &mut [f64]);
    /// Elementwise maximum over ranks, in place.
    fn all_reduce_max_f64(&self, data: &mut [f64]);
    /// Every rank's bytes, in rank order.
    fn all_gather_bytes(&self, mine: &[u8]) -> Vec<Vec<u8>>;
    /// Rank 0's bytes on every rank (`data` is ignored elsewhere and replaced).
    fn broadcast_bytes(&self, data: &mut Vec<u8>);
    /// What this job is, for the log ("1 process", "MPI, 4 ranks").
    fn describe(&self) -> String;
    /// Ends the whole job with `code`: a rank that fails alone must not leave the others
    /// waiting in their next collective operation.
    fn abort(&self, code: i32) -> !;
}

/// A job of one process: every operation is the identity.
pub struct Alone;

impl Collective for Alone {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn all_reduce_sum_f32(&self, _: &mut [f32]) {}
    fn all_reduce_sum_f64(&self, _: &mut [f64]) {}
    fn all_reduce_max_f64(&self, _: &mut [f64]) {}
    fn all_gather_bytes(&self, mine: &[u8]) -> Vec<Vec<u8>> {
        vec![mine.to_vec()]
    }
    fn broadcast_bytes(&self, _: &mut Vec<u8>) {}
    fn describe(&self) -> String {
        "1 process".into()
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

/// Gradients travel in buckets of this many floats (64 MiB), so the staging copy stays small
/// and no message reaches MPI's 2^31-element count limit.
pub const BUCKET_FLOATS: usize = 16 << 20;

/// The job this process belongs to: MPI when built with the `mpi` feature and launched by an
/// MPI launcher (`mpirun`, `srun --mpi=pmix`), else a job of one.
pub fn from_environment() -> Box<dyn Collective> {
    #[cfg(feature = "mpi")]
    if launched_by_mpi() {
        return Box::new(Mpi::initialize());
    }
    Box::new(Alone)
}

/// Whether an MPI launcher started this process (Open MPI, MPICH / Hydra, Slurm with PMI).
pub fn launched_by_mpi() -> bool {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS"].iter().any(|v| std::env::var_os(v).is_some())
}

/// This process's rank among those on its machine, as the launcher says (0 without one): what
/// `{local_rank}` in a device spec stands for.
pub fn local_rank() -> usize {
    ["OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID", "PMI_LOCAL_RANK"].iter().find_map(|v| std::env::var(v).ok()?.parse().ok()).unwrap_or(0)
}

#[cfg(feature = "mpi")]
pub use mpi_impl::Mpi;

#[cfg(feature = "mpi")]
mod mpi_impl {
    use mpi::collective::SystemOperation;
    use mpi::datatype::PartitionMut;
    use mpi::topology::SimpleCommunicator;
    use mpi::traits::*;

    use super::{BUCKET_FLOATS, Collective};

    /// MPI's world communicator; finalizes MPI when dropped.
    pub struct Mpi {
        world: SimpleCommunicator,
        _universe: mpi::environment::Universe,
    }

    impl Mpi {
        /// Initializes MPI (once per process).
        pub fn initialize() -> Mpi {
            let universe = mpi::initialize().expect("MPI is initialized once per process");
            // A panic on one rank ends the job (after the usual message) instead of leaving the
            // other ranks waiting for it.
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                previous(info);
                SimpleCommunicator::world().abort(101);
            }));
            Mpi { world: universe.world(), _universe: universe }
        }

        fn reduce<T: Equivalence + Copy + Default>(&self, data: &mut [T], op: SystemOperation) {
            let mut out = vec![T::default(); data.len().min(BUCKET_FLOATS)];
            for chunk in data.chunks_mut(BUCKET_FLOATS) {
                let out = &mut out[..chunk.len()];
                self.world.all_reduce_into(&*chunk, out, op);
                chunk.copy_from_slice(out);
            }
        }
    }

    impl Collective for Mpi {
        fn rank(&self) -> usize {
            self.world.rank() as usize
        }
        fn size(&self) -> usize {
            self.world.size() as usize
        }
        fn all_reduce_sum_f32(&self, data: &mut [f32]) {
            self.reduce(data, SystemOperation::sum());
        }
        fn all_reduce_sum_f64(&self, data: &mut [f64]) {
            self.reduce(data, SystemOperation::sum());
        }
        fn all_reduce_max_f64(&self, data: &mut [f64]) {
            self.reduce(data, SystemOperation::max());
        }
        fn all_gather_bytes(&self, mine: &[u8]) -> Vec<Vec<u8>> {
            // One byte more than the message, so no rank sends (or the job gathers) nothing:
            // Open MPI refuses zero-length all-gathers with MPI_ERR_ARG.
            let mine: Vec<u8> = std::iter::once(0).chain(mine.iter().copied()).collect();
            let mine = &mine[..];
            let size = self.size();
            let len = mine.len() as mpi::Count;
            let mut counts = vec![0 as mpi::Count; size];
            self.world.all_gather_into(&len, &mut counts[..]);
            let displs: Vec<mpi::Count> = counts.iter().scan(0, |at, &c| Some(std::mem::replace(at, *at + c))).collect();
            let total: usize = counts.iter().map(|&c| c as usize).sum();
            let mut all = vec![0u8; total];
            {
                let mut partition = PartitionMut::new(&mut all[..], &counts[..], &displs[..]);
                self.world.all_gather_varcount_into(mine, &mut partition);
            }
            counts.iter().zip(&displs).map(|(&c, &d)| all[d as usize + 1..(d + c) as usize].to_vec()).collect()
        }
        fn broadcast_bytes(&self, data: &mut Vec<u8>) {
            let root = self.world.process_at_rank(0);
            let mut len = data.len() as u64;
            root.broadcast_into(&mut len);
            if len == 0 {
                data.clear();
                return;
            }
            data.resize(len as usize, 0);
            for chunk in data.chunks_mut(1 << 30) {
                root.broadcast_into(chunk);
            }
        }
        fn describe(&self) -> String {
            format!("MPI, {} ranks", self.size())
        }
        fn abort(&self, code: i32) -> ! {
            self.world.abort(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alone_is_the_identity() {
        let c = Alone;
        let mut x = vec![1.5f32, -2.0];
        c.all_reduce_sum_f32(&mut x);
        assert_eq!(x, [1.5, -2.0]);
        assert_eq!(c.all_gather_bytes(b"abc"), vec![b"abc".to_vec()]);
        let mut b = b"xyz".to_vec();
        c.broadcast_bytes(&mut b);
        assert_eq!(b, b"xyz");
        assert_eq!((c.rank(), c.size()), (0, 1));
    }
}
