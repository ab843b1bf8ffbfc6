//! Rotary position embedding, HF "rotate_half" layout: for pair j < hd/2 the two components are
//! x[j] and x[j + hd/2], rotated by `pos * theta^(-2j/hd)`.

use rayon::prelude::*;

/// cos/sin tables [max_pos, hd/2].
pub struct RopeTable {
    /// Half the head width.
    pub half: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RopeTable {
    /// Tables for positions `0..max_pos`, computed in f64 as HF does before casting.
    pub fn new(head_dim: usize, theta: f64, max_pos: usize) -> Self {
        let half = head_dim / 2;
        let mut cos = Vec::with_capacity(max_pos * half);
        let mut sin = Vec::with_capacity(max_pos * half);
        for p in 0..max_pos {
            for j in 0..half {
                // HF: inv_freq in float32, then pos * inv_freq in float32.
                let inv = (1.0 / theta.powf((2 * j) as f64 / head_dim as f64)) as f32;
                let angle = p as f32 * inv;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        RopeTable { half, cos, sin }
    }

    /// The cosine and sine tables, [max_pos, half] each (uploaded as they are by the GPU backend).
    pub fn tables(&self) -> (&[f32], &[f32]) {
        (&self.cos, &self.sin)
    }

    /// Positions the table covers.
    pub fn max_pos(&self) -> usize {
        self.cos.len() / self.half.max(1)
    }
}

fn rotate(x: &mut [f32], table: &RopeTable, pos: usize, sign: f32) {
    let h = table.half;
    let (c, s) = (&table.cos[pos * h..(pos + 1) * h], &table.sin[pos * h..(pos + 1) * h]);
    let (a, b) = x.split_at_mut(h);
    for j in 0..h {
        let (x1, x2) = (a[j], b[j]);
        let sn = sign * s[j];
        a[j] = x1 * c[j] - x2 * sn;
        b[j] = x2 * c[j] + x1 * sn;
    }
}

/// In place on x[N, heads, hd] with positions[N].
pub fn rope_forward(x: &mut [f32], positions: &[usize], table: &RopeTable, heads: usize) {
    let hd = 2 * table.half;
    x.par_chunks_exact_mut(heads * hd).zip(positions.par_iter()).for_each(|(row, &p)| {
        for head in row.chunks_exact_mut(hd) {
            rotate(head, table, p, 1.0);
        }
    });
}

/// In place on dx: the rotation is orthogonal, so its backward rotates by the opposite angle.
pub fn rope_backward(dx: &mut [f32], positions: &[usize], table: &RopeTable, heads: usize) {
    let hd = 2 * table.half;
    dx.par_chunks_exact_mut(heads * hd).zip(positions.par_iter()).for_each(|(row, &p)| {
        for head in row.chunks_exact_mut(hd) {
            rotate(head, table, p, -1.0);
        }
    });
}
