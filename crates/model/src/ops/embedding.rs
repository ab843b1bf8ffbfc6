//! Token embedding lookup.

/// out[N,D] = wte[ids[n]].
pub fn embedding_forward(out: &mut [f32], ids: &[u32], wte: &[f32], d: usize) {
    for (row, &id) in out.chunks_exact_mut(d).zip(ids) {
        let id = id as usize;
        row.copy_from_slice(&wte[id * d..(id + 1) * d]);
    }
}

/// dwte[V,D] += scatter of dout[N,D] by ids.
pub fn embedding_backward(dwte: &mut [f32], dout: &[f32], ids: &[u32], d: usize) {
    for (row, &id) in dout.chunks_exact(d).zip(ids) {
        let id = id as usize;
        for (g, x) in dwte[id * d..(id + 1) * d].iter_mut().zip(row) {
            *g += x;
        }
    }
}
