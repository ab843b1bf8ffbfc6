//! What a matmul's kernel configuration is and what its choice depends on: plain data shared by
//! the device (which caches autotuned tiles) and the ops (which choose and run them).

/// A configuration of the tiled matmul kernel: each workgroup computes 64·tm4 x 64·tn4 outputs
/// (tm4, tn4 in 1..=2), and K is cut into `splits` ranges whose partial products
/// `matmul_reduce` sums (split-K, for outputs too small to fill the device).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct MatmulTile {
    /// vec4 groups of output rows per thread (tile height 64·tm4).
    pub tm4: u32,
    /// vec4 groups of output columns per thread (tile width 64·tn4).
    pub tn4: u32,
    /// K ranges computed by separate workgroups, 1 for none.
    pub splits: u32,
    /// The cooperative-matrix kernel (`matmul_coop.wgsl`, 16x16 per subgroup) instead; the
    /// other fields are then unused.
    pub coop: bool,
}

impl MatmulTile {
    /// The cooperative-matrix kernel.
    pub const COOP: MatmulTile = MatmulTile { tm4: 0, tn4: 0, splits: 1, coop: true };

    /// Whether the tiled kernel's workgroup arrays for this tile (16 rows of K, each 64·tm4 +
    /// 64·tn4 values plus a vec4 of padding per operand) fit the adapter.
    pub(crate) fn fits(&self, limits: &wgpu::Limits) -> bool {
        self.coop || 16 * 16 * (16 * (self.tm4 + self.tn4) as usize + 2) <= limits.max_compute_workgroup_storage_size as usize
    }
}

impl std::fmt::Display for MatmulTile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.coop {
            return write!(f, "cooperative 8x8 f32 matrices");
        }
        write!(f, "{}x{}", 64 * self.tm4, 64 * self.tn4)?;
        if self.splits > 1 {
            write!(f, " split-K {}", self.splits)?;
        }
        Ok(())
    }
}

/// What a matmul's tile choice depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub(crate) struct MatmulShape {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a_k_major: bool,
    pub b_k_major: bool,
    pub b_f16: bool,
}

impl MatmulShape {
    /// x·Wᵀ with f32 weights (both operands K-contiguous).
    pub(crate) fn x_wt(m: usize, n: usize, k: usize) -> MatmulShape {
        MatmulShape { m, n, k, a_k_major: true, b_k_major: true, b_f16: false }
    }

    /// The autotune cache key: rows by power of two (RL batches change their token count every
    /// step), the rest exact.
    pub(crate) fn key(&self) -> MatmulShape {
        MatmulShape { m: self.m.next_power_of_two(), ..*self }
    }

    pub(crate) fn workgroups(&self, tile: MatmulTile) -> usize {
        self.m.div_ceil(64 * tile.tm4 as usize) * self.n.div_ceil(64 * tile.tn4 as usize) * tile.splits as usize
    }
}
