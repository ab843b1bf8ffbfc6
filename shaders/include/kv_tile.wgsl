// The flash-attention kernels' K/V tiles: rows kt .. kt + KV_TILE of KV head kvh into the
// workgroup arrays ks and vs (zeros past row `last`), read by all WG invocations (t the
// invocation's index). The including kernel declares k, v, p.hkv, ks, vs, KV_TILE, HEAD_DIM, WG.
fn load_kv_tile(t: u32, kt: u32, last: u32, kvh: u32) {
    for (var e = t; e < KV_TILE * HEAD_DIM; e += WG) {
        let j = kt + e / HEAD_DIM;
        var kx = 0.0;
        var vx = 0.0;
        if (j <= last) {
            let o = (j * p.hkv + kvh) * HEAD_DIM + e % HEAD_DIM;
            kx = k[o];
            vx = v[o];
        }
        ks[e] = kx;
        vs[e] = vx;
    }
}
