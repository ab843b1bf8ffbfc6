//! The model's operations on the device, one WGSL kernel (or two) each, in the argument order
//! of the CPU ops in `rstar2_model::ops` (outputs, saved activations, inputs, dims). Parameter
//! gradients accumulate; activation gradients overwrite. Each call only records work.

use rstar2_model::ops::attention::Heads;

use crate::context::{Gpu, View};
use crate::kernels;
use crate::tensor::Tensor;
use crate::tile::{MatmulShape, MatmulTile};

/// Workgroups for `items` invocations at `per_group` each, folded into y past the per-dimension
/// limit (kernels index `gid.x + gid.y * num_workgroups.x * per_group`).
fn grid(gpu: &Gpu, items: usize, per_group: usize) -> [u32; 3] {
    let groups = items.div_ceil(per_group) as u64;
    let max = u64::from(gpu.limits.max_compute_workgroups_per_dimension);
    let x = groups.min(max);
    let y = if x == 0 { 0 } else { groups.div_ceil(x) };
    [x as u32, y as u32, 1]
}

/// Calls `f(start, len)` for windows covering `n` elements, each short enough to bind and
/// starting at an aligned element for every 32-bit operand, so kernels index a window from 0.
fn elementwise_windows(gpu: &Gpu, n: usize, mut f: impl FnMut(usize, usize)) {
    let step = gpu.window_elems() / 64 * 64;
    let mut start = 0;
    while start < n {
        let len = step.min(n - start);
        f(start, len);
        start += len;
    }
}

/// One elementwise kernel over n elements of every operand, window by window.
fn elementwise(gpu: &Gpu, kernel: &kernels::Kernel, operands: &[&Tensor], n: usize, extra: &[u32]) {
    elementwise_windows(gpu, n, |start, len| {
        let views: Vec<_> = operands.iter().map(|t| gpu.window(t, start, len).0).collect();
        let mut params = vec![u(len)];
        params.extend_from_slice(extra);
        gpu.dispatch_views(kernel, &[], &views, &params, grid(gpu, len, 64));
    });
}

fn u(x: usize) -> u32 {
    u32::try_from(x).expect("dimension fits in u32")
}

fn f(x: f32) -> u32 {
    x.to_bits()
}

fn check(op: &str, name: &str, t: &Tensor, need: usize) {
    assert!(t.len() >= need, "{op}: {name} has {} elements, needs {need}", t.len());
}

/// How `matmul` reads its operands: A[i, p] = a[a_off + i a_rs + p a_cs],
/// B[p, j] = b[b_off + p b_rs + j b_cs], C[i, j] = c[c_off + i ldc + j].
#[derive(Debug, Clone, Copy)]
#[allow(missing_docs)]
pub struct Strides {
    pub a_rs: usize,
    pub a_cs: usize,
    pub b_rs: usize,
    pub b_cs: usize,
    pub a_off: usize,
    pub b_off: usize,
    pub c_off: usize,
    pub ldc: usize,
}

/// C[m, n] (+)= A[m, k] · B[k, n] through strides. Operands past the binding limit are bound
/// in windows: the product is cut into blocks of rows, columns and K until every operand's
/// range fits (K blocks after the first accumulate).
#[allow(clippy::too_many_arguments)]
pub fn matmul(gpu: &Gpu, c: &Tensor, a: &Tensor, b: &Tensor, s: Strides, m: usize, n: usize, k: usize, accumulate: bool) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        assert!(accumulate || (s.c_off == 0 && s.ldc == n && c.len() == m * n), "matmul: k = 0 into a strided view");
        if !accumulate {
            gpu.zero(c);
        }
        return;
    }
    assert!(!a.is_f16() && !c.is_f16(), "matmul: only the weight operand B may be f16");
    check("matmul", "C", c, s.c_off + (m - 1) * s.ldc + n);
    check("matmul", "A", a, s.a_off + (m - 1) * s.a_rs + (k - 1) * s.a_cs + 1);
    check("matmul", "B", b, s.b_off + (k - 1) * s.b_rs + (n - 1) * s.b_cs + 1);
    matmul_block(gpu, c, a, b, &s, (0, m), (0, n), (0, k), accumulate);
}

/// Elements `start, len` that rows r0.. (rn of them) and columns c0.. (cn) of a strided operand
/// span.
fn span(off: usize, rs: usize, cs: usize, (r0, rn): (usize, usize), (c0, cn): (usize, usize)) -> (usize, usize) {
    let start = off + r0 * rs + c0 * cs;
    (start, (rn - 1) * rs + (cn - 1) * cs + 1)
}

#[allow(clippy::too_many_arguments)]
fn matmul_block(gpu: &Gpu, c: &Tensor, a: &Tensor, b: &Tensor, s: &Strides, rows: (usize, usize), cols: (usize, usize), ks: (usize, usize), accumulate: bool) {
    let limit = gpu.window_elems();
    let (a_start, a_len) = span(s.a_off, s.a_rs, s.a_cs, rows, ks);
    let (b_start, b_len) = span(s.b_off, s.b_rs, s.b_cs, ks, cols);
    let (c_start, c_len) = span(s.c_off, s.ldc, 1, rows, cols);
    let (a_big, b_big, c_big) = (a_len > limit, b_len > limit, c_len > limit);
    if !(a_big || b_big || c_big) {
        let ((av, ash), (bv, bsh), (cv, csh)) = (gpu.window(a, a_start, a_len), gpu.window(b, b_start, b_len), gpu.window(c, c_start, c_len));
        let (m, n, k) = (rows.1, cols.1, ks.1);
        let shape = MatmulShape::of(s, m, n, k, b);
        let tile = choose_tile(gpu, shape, &av, &bv, [ash, bsh], s);
        dispatch_matmul(gpu, tile, shape, &cv, &av, &bv, s, [csh, ash, bsh], accumulate);
        return;
    }
    // Halve the longest dimension among those of the operands that do not fit.
    let extent = |d: usize| [rows.1, cols.1, ks.1][d];
    let mut dims = Vec::new();
    if a_big {
        dims.extend([0, 2]);
    }
    if b_big {
        dims.extend([2, 1]);
    }
    if c_big {
        dims.extend([0, 1]);
    }
    let d = dims.into_iter().filter(|&d| extent(d) > 1).max_by_key(|&d| extent(d)).expect("matmul: one row of an operand is over the binding limit");
    let halve = |(start, len): (usize, usize)| ((start, len / 2), (start + len / 2, len - len / 2));
    match d {
        0 => {
            let (x, y) = halve(rows);
            matmul_block(gpu, c, a, b, s, x, cols, ks, accumulate);
            matmul_block(gpu, c, a, b, s, y, cols, ks, accumulate);
        }
        1 => {
            let (x, y) = halve(cols);
            matmul_block(gpu, c, a, b, s, rows, x, ks, accumulate);
            matmul_block(gpu, c, a, b, s, rows, y, ks, accumulate);
        }
        _ => {
            let (x, y) = halve(ks);
            matmul_block(gpu, c, a, b, s, rows, cols, x, accumulate);
            matmul_block(gpu, c, a, b, s, rows, cols, y, true);
        }
    }
}

impl MatmulShape {
    /// The product C[m, n] = A·B read through `s`, B being `b`.
    fn of(s: &Strides, m: usize, n: usize, k: usize, b: &Tensor) -> MatmulShape {
        MatmulShape { m, n, k, a_k_major: s.a_cs == 1, b_k_major: s.b_rs == 1, b_f16: b.is_f16() }
    }
}

/// Workgroups that keep a real GPU busy (a few per compute unit of a large card).
const BUSY_WORKGROUPS: usize = 256;

/// Every tile the autotune tries for a shape: both tile sizes per side, and split-K where the
/// output alone gives too few workgroups and each K range stays at least 128 deep.
pub fn matmul_candidates(gpu: &Gpu, m: usize, n: usize, k: usize) -> Vec<MatmulTile> {
    let mut out = Vec::new();
    for (tm4, tn4) in [(1, 1), (2, 2), (2, 1), (1, 2)] {
        for splits in [1u32, 2, 4, 8, 16] {
            let tile = MatmulTile { tm4, tn4, splits, coop: false };
            let shape = MatmulShape::x_wt(m, n, k);
            let fills = shape.workgroups(MatmulTile { splits: 1, ..tile }) >= BUSY_WORKGROUPS;
            if tile.fits(&gpu.limits) && (splits == 1 || (!fills && k / splits as usize >= 128 && m * n * splits as usize <= gpu.window_elems())) {
                out.push(tile);
            }
        }
    }
    if gpu.has_coop_matrix() && coop_fits(m, n, k) {
        out.push(MatmulTile::COOP);
    }
    out
}

/// The tile used without autotuning: large tiles when they still give enough workgroups,
/// split-K for small outputs with a deep K on real GPUs (on a CPU adapter more workgroups only
/// add work).
fn heuristic_tile(gpu: &Gpu, shape: MatmulShape) -> MatmulTile {
    let small = MatmulTile { tm4: 1, tn4: 1, splits: 1, coop: false };
    // 128x128 where its 16.5 KiB of workgroup memory fits (WebGPU's floor is 16 KiB).
    let large = Some(MatmulTile { tm4: 2, tn4: 2, splits: 1, coop: false }).filter(|t| t.fits(&gpu.limits)).unwrap_or(small);
    if shape.workgroups(large) >= BUSY_WORKGROUPS / 2 {
        return large;
    }
    if gpu.is_software() {
        return if shape.m >= 128 && shape.n >= 128 { large } else { small };
    }
    let mut splits = 1;
    while shape.workgroups(MatmulTile { splits: splits * 2, ..small }) <= BUSY_WORKGROUPS && shape.k / (splits as usize * 2) >= 256 && shape.m * shape.n * splits as usize * 2 <= gpu.window_elems() {
        splits *= 2;
    }
    MatmulTile { splits, ..small }
}

/// The tile for a shape: the autotuned one where autotuning is on (timed once per shape and
/// adapter, then cached), else the heuristic's.
fn choose_tile(gpu: &Gpu, shape: MatmulShape, a: &View<'_>, b: &View<'_>, [ash, bsh]: [usize; 2], s: &Strides) -> MatmulTile {
    if !gpu.autotunes() {
        return heuristic_tile(gpu, shape);
    }
    if let Some(&t) = gpu.matmul_tiles.lock().expect("tile cache").get(&shape.key()) {
        return t;
    }
    // Time every candidate on the real operands into a scratch output; what was recorded
    // before runs first, so it is not timed.
    let scratch = gpu.alloc(shape.m * shape.n);
    let cv = gpu.window(&scratch, 0, shape.m * shape.n).0;
    let st = Strides { c_off: 0, ldc: shape.n, ..*s };
    gpu.sync();
    let mut best = (f64::INFINITY, heuristic_tile(gpu, shape));
    // The cooperative kernel has no f16-weights variant.
    for tile in matmul_candidates(gpu, shape.m, shape.n, shape.k).into_iter().filter(|t| !(t.coop && shape.b_f16)) {
        dispatch_matmul(gpu, tile, shape, &cv, a, b, &st, [0, ash, bsh], false);
        gpu.sync();
        let start = web_time::Instant::now();
        for _ in 0..3 {
            dispatch_matmul(gpu, tile, shape, &cv, a, b, &st, [0, ash, bsh], false);
        }
        gpu.sync();
        let t = start.elapsed().as_secs_f64();
        if t < best.0 {
            best = (t, tile);
        }
    }
    gpu.matmul_tiles.lock().expect("tile cache").insert(shape.key(), best.1);
    gpu.save_autotune();
    best.1
}

/// The tile an x·Wᵀ product of this shape gets with f32 weights: the autotuned one once tuned,
/// else the heuristic's (for reports).
pub fn matmul_tile(gpu: &Gpu, m: usize, n: usize, k: usize) -> MatmulTile {
    let shape = MatmulShape::x_wt(m, n, k);
    gpu.matmul_tiles.lock().expect("tile cache").get(&shape.key()).copied().unwrap_or_else(|| heuristic_tile(gpu, shape))
}

/// Whether the cooperative-matrix kernel takes a shape (16x16 blocks of C, K in steps of 8).
fn coop_fits(m: usize, n: usize, k: usize) -> bool {
    m.is_multiple_of(16) && n.is_multiple_of(16) && k.is_multiple_of(8)
}

/// Checks the cooperative-matrix kernel against the tiled one on this device, in the three
/// operand layouts; the largest difference relative to the largest output.
pub(crate) async fn coop_matrix_error(gpu: &Gpu) -> f32 {
    let (m, n, k) = (32, 48, 40);
    let values = |len: usize, seed: usize| -> Vec<f32> { (0..len).map(|i| (((i * 7919 + seed * 104_729) % 1000) as f32 / 500.0) - 1.0).collect() };
    let (ta, tb) = (gpu.upload(&values(m * k, 1)), gpu.upload(&values(n * k, 2)));
    let layouts = [
        Strides { a_rs: k, a_cs: 1, b_rs: 1, b_cs: k, a_off: 0, b_off: 0, c_off: 0, ldc: n },
        Strides { a_rs: k, a_cs: 1, b_rs: n, b_cs: 1, a_off: 0, b_off: 0, c_off: 0, ldc: n },
        Strides { a_rs: 1, a_cs: m, b_rs: n, b_cs: 1, a_off: 0, b_off: 0, c_off: 0, ldc: n },
    ];
    let mut worst = 0.0f32;
    for s in layouts {
        let (want, got) = (gpu.alloc(m * n), gpu.alloc(m * n));
        matmul_with_tile(gpu, MatmulTile { tm4: 1, tn4: 1, splits: 1, coop: false }, &want, &ta, &tb, s, m, n, k, false);
        matmul_with_tile(gpu, MatmulTile::COOP, &got, &ta, &tb, s, m, n, k, false);
        let (want, got) = (gpu.read_async(&want).await, gpu.read_async(&got).await);
        let scale = want.iter().fold(0.0f32, |x, v| x.max(v.abs())).max(1e-6);
        worst = worst.max(want.iter().zip(&got).map(|(w, g)| (w - g).abs()).fold(0.0, f32::max) / scale);
    }
    worst
}

/// Records the tiled kernel (and the split-K sum) for one product whose operands are bound.
#[allow(clippy::too_many_arguments)]
fn dispatch_matmul(gpu: &Gpu, tile: MatmulTile, shape: MatmulShape, c: &View<'_>, a: &View<'_>, b: &View<'_>, s: &Strides, [csh, ash, bsh]: [usize; 3], accumulate: bool) {
    let MatmulShape { m, n, k, .. } = shape;
    if tile.coop {
        assert!(coop_fits(m, n, k) && !shape.b_f16, "matmul_coop: {m}x{n}x{k} (f16 weights {})", shape.b_f16);
        assert!((s.a_cs == 1 || s.a_rs == 1) && (s.b_rs == 1 || s.b_cs == 1), "matmul_coop: an operand contiguous along neither dimension");
        let constants = [("SG", gpu.subgroup_size() as f64), ("A_K_MAJOR", f64::from(u8::from(shape.a_k_major))), ("B_K_MAJOR", f64::from(u8::from(shape.b_k_major)))];
        let params = [u(m), u(n), u(k), u32::from(accumulate), u(s.a_rs), u(s.a_cs), u(s.b_rs), u(s.b_cs), u(ash), u(bsh), u(csh), u(s.ldc), 0];
        gpu.dispatch_views(&kernels::MATMUL_COOP, &constants, &[*c, *a, *b], &params, [u(n / 16), u(m / 16), 1]);
        return;
    }
    // A tile tuned for the smaller shapes of its bucket may split more than this one's scratch
    // can bind.
    let splits = (tile.splits.max(1) as usize).min((gpu.window_elems() / (m * n)).max(1));
    let k_chunk = k.div_ceil(splits).div_ceil(16) * 16;
    let splits = k.div_ceil(k_chunk);
    let constants = [("TM4", f64::from(tile.tm4)), ("TN4", f64::from(tile.tn4)), ("SPLIT_K", if splits > 1 { 1.0 } else { 0.0 })];
    let groups = [u(n.div_ceil(64 * tile.tn4 as usize)), u(m.div_ceil(64 * tile.tm4 as usize)), u(splits)];
    let scratch = (splits > 1).then(|| gpu.alloc(splits * m * n));
    let out = match &scratch {
        Some(t) => gpu.window(t, 0, splits * m * n).0,
        None => *c,
    };
    let params = [u(m), u(n), u(k), u32::from(accumulate), u(s.a_rs), u(s.a_cs), u(s.b_rs), u(s.b_cs), u(ash), u(bsh), u(csh), u(s.ldc), u(k_chunk)];
    if shape.b_f16 {
        gpu.dispatch_views_f16_weights(&kernels::MATMUL, &constants, &[out, *a, *b], &params, groups);
    } else {
        gpu.dispatch_views(&kernels::MATMUL, &constants, &[out, *a, *b], &params, groups);
    }
    if let Some(t) = &scratch {
        let views = [*c, gpu.window(t, 0, splits * m * n).0];
        gpu.dispatch_views(&kernels::MATMUL_REDUCE, &[], &views, &[u(m), u(n), u(splits), u32::from(accumulate), u(csh), u(s.ldc)], grid(gpu, m * n, 64));
    }
}

/// [`matmul`] with a given tile instead of the chosen one, for tests and benchmarks (operands
/// must fit the binding limit).
#[allow(clippy::too_many_arguments)]
pub fn matmul_with_tile(gpu: &Gpu, tile: MatmulTile, c: &Tensor, a: &Tensor, b: &Tensor, s: Strides, m: usize, n: usize, k: usize, accumulate: bool) {
    assert!(m > 0 && n > 0 && k > 0, "matmul_with_tile: empty product");
    let (a_start, a_len) = span(s.a_off, s.a_rs, s.a_cs, (0, m), (0, k));
    let (b_start, b_len) = span(s.b_off, s.b_rs, s.b_cs, (0, k), (0, n));
    let (c_start, c_len) = span(s.c_off, s.ldc, 1, (0, m), (0, n));
    let ((av, ash), (bv, bsh), (cv, csh)) = (gpu.window(a, a_start, a_len), gpu.window(b, b_start, b_len), gpu.window(c, c_start, c_len));
    let shape = MatmulShape::of(&s, m, n, k, b);
    dispatch_matmul(gpu, tile, shape, &cv, &av, &bv, &s, [csh, ash, bsh], accumulate);
}

/// C[m, n] = A[m, k] · B[n, k]ᵀ (both row-major), or += with `accumulate`.
#[allow(clippy::too_many_arguments)]
pub fn matmul_nt(gpu: &Gpu, c: &Tensor, a: &Tensor, b: &Tensor, m: usize, n: usize, k: usize, accumulate: bool) {
    // Decoding: few rows, a weight read once per column; a large weight in windows of whole
    // rows.
    if m <= 8 && !accumulate && k > 0 {
        check("matvec", "C", c, m * n);
        check("matvec", "A", a, m * k);
        check("matvec", "W", b, n * k);
        let per = (gpu.window_elems() / k).max(1).min(n);
        let mut j0 = 0;
        while j0 < n {
            let nb = per.min(n - j0);
            let (wv, wsh) = gpu.window(b, j0 * k, nb * k);
            let (cv, csh) = gpu.window(c, j0, (m - 1) * n + nb);
            let av = gpu.window(a, 0, m * k).0;
            let (views, params, groups) = ([cv, av, wv], [u(m), u(nb), u(k), u(n), u(wsh), u(csh)], grid(gpu, nb, 1));
            if b.is_f16() {
                gpu.dispatch_views_f16_weights(&kernels::MATVEC, &[], &views, &params, groups);
            } else {
                gpu.dispatch_views(&kernels::MATVEC, &[], &views, &params, groups);
            }
            j0 += nb;
        }
        return;
    }
    let s = Strides { a_rs: k, a_cs: 1, b_rs: 1, b_cs: k, a_off: 0, b_off: 0, c_off: 0, ldc: n };
    matmul(gpu, c, a, b, s, m, n, k, accumulate);
}

/// out[n, o] = x[n, i] · w[o, i]ᵀ + b[o].
#[allow(clippy::too_many_arguments)]
pub fn linear_forward(gpu: &Gpu, out: &Tensor, x: &Tensor, w: &Tensor, b: Option<&Tensor>, n: usize, i: usize, o: usize) {
    matmul_nt(gpu, out, x, w, n, o, i, false);
    if let Some(b) = b {
        check("bias_forward", "bias", b, o);
        gpu.dispatch(&kernels::BIAS_FORWARD, &[], &[out, b], &[u(n), u(o)], grid(gpu, n * o, 64));
    }
}

/// dx[n, i] = dout · w (overwrite); dw[o, i] += doutᵀ · x; db[o] += Σ_rows dout.
#[allow(clippy::too_many_arguments)]
pub fn linear_backward(gpu: &Gpu, dx: Option<&Tensor>, dw: &Tensor, db: Option<&Tensor>, dout: &Tensor, x: &Tensor, w: &Tensor, n: usize, i: usize, o: usize) {
    if let Some(dx) = dx {
        let s = Strides { a_rs: o, a_cs: 1, b_rs: i, b_cs: 1, a_off: 0, b_off: 0, c_off: 0, ldc: i };
        matmul(gpu, dx, dout, w, s, n, i, o, false);
    }
    let s = Strides { a_rs: 1, a_cs: o, b_rs: i, b_cs: 1, a_off: 0, b_off: 0, c_off: 0, ldc: i };
    matmul(gpu, dw, dout, x, s, o, i, n, true);
    if let Some(db) = db {
        gpu.dispatch(&kernels::BIAS_BACKWARD, &[], &[db, dout], &[u(n), u(o)], grid(gpu, o, 32));
    }
}

/// Rows of a [vocab, d] table per window.
fn table_rows_per_window(gpu: &Gpu, d: usize) -> usize {
    let rows = gpu.window_elems() / d;
    assert!(rows > 0, "one row of {d} values is over the binding limit");
    rows
}

/// out[rows, d] = wte[ids[r]]; a table past the binding limit in windows of rows.
pub fn embedding_forward(gpu: &Gpu, out: &Tensor, ids: &Tensor, wte: &Tensor, rows: usize, d: usize) {
    embedding_forward_strided(gpu, out, ids, 1, wte, rows, d);
}

/// [`embedding_forward`] with the ids `stride` apart (the sampler's (token, log-prob) pairs).
pub fn embedding_forward_strided(gpu: &Gpu, out: &Tensor, ids: &Tensor, stride: usize, wte: &Tensor, rows: usize, d: usize) {
    check("embedding_forward", "out", out, rows * d);
    check("embedding_forward", "ids", ids, (rows - 1) * stride + 1);
    let vocab = wte.len() / d;
    let per = table_rows_per_window(gpu, d);
    let mut lo = 0;
    while lo < vocab {
        let hi = (lo + per).min(vocab);
        let (wv, shift) = gpu.window(wte, lo * d, (hi - lo) * d);
        let views = [gpu.window(out, 0, rows * d).0, gpu.window(ids, 0, (rows - 1) * stride + 1).0, wv];
        gpu.dispatch_views(&kernels::EMBEDDING_FORWARD, &[("ID_STRIDE", stride as f64)], &views, &[u(rows), u(d), u(lo), u(hi), u(shift)], grid(gpu, rows * d, 64));
        lo = hi;
    }
}

/// dwte[ids[r]] += dout[r]. Token ids come from the host, which groups the rows by token; a
/// table past the binding limit in windows of rows.
pub fn embedding_backward(gpu: &Gpu, dwte: &Tensor, dout: &Tensor, ids: &[u32], d: usize) {
    let mut order: Vec<u32> = (0..u(ids.len())).collect();
    order.sort_by_key(|&r| ids[r as usize]);
    let mut tokens = Vec::new();
    let mut first = Vec::new();
    for (q, &r) in order.iter().enumerate() {
        let t = ids[r as usize];
        if tokens.last() != Some(&t) {
            tokens.push(t);
            first.push(u(q));
        }
    }
    first.push(u(order.len()));
    let order_t = gpu.upload_u32(&order);
    let per = table_rows_per_window(gpu, d);
    let vocab = dwte.len() / d;
    let mut lo = 0;
    while lo < vocab {
        let hi = (lo + per).min(vocab);
        // Distinct tokens are sorted: this window's are one run of them.
        let (ua, ub) = (tokens.partition_point(|&t| (t as usize) < lo), tokens.partition_point(|&t| (t as usize) < hi));
        if ua < ub {
            let (tokens_t, first_t) = (gpu.upload_u32(&tokens[ua..ub]), gpu.upload_u32(&first[ua..=ub]));
            let (wv, shift) = gpu.window(dwte, lo * d, (hi - lo) * d);
            let views = [wv, gpu.window(dout, 0, dout.len()).0, gpu.window(&tokens_t, 0, ub - ua).0, gpu.window(&first_t, 0, ub - ua + 1).0, gpu.window(&order_t, 0, order.len()).0];
            gpu.dispatch_views(&kernels::EMBEDDING_BACKWARD, &[], &views, &[u(ub - ua), u(d), u(lo), u(shift)], grid(gpu, (ub - ua) * d, 64));
        }
        lo = hi;
    }
}

/// out[rows, d] = x / rms(x) * w, saving rstd[rows].
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_forward(gpu: &Gpu, out: &Tensor, rstd: &Tensor, x: &Tensor, w: &Tensor, rows: usize, d: usize, eps: f32) {
    check("rmsnorm_forward", "x", x, rows * d);
    check("rmsnorm_forward", "rstd", rstd, rows);
    gpu.dispatch(&kernels::RMSNORM_FORWARD, &[], &[out, rstd, x, w], &[u(rows), u(d), f(eps)], grid(gpu, rows, 1));
}

/// dx (overwrite) and dw (accumulate) of RMSNorm.
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_backward(gpu: &Gpu, dx: &Tensor, dw: &Tensor, dout: &Tensor, x: &Tensor, w: &Tensor, rstd: &Tensor, rows: usize, d: usize) {
    check("rmsnorm_backward", "dx", dx, rows * d);
    gpu.dispatch(&kernels::RMSNORM_BACKWARD, &[], &[dx, dout, x, w, rstd], &[u(rows), u(d)], grid(gpu, rows, 1));
    gpu.dispatch(&kernels::RMSNORM_BACKWARD_WEIGHT, &[], &[dw, dout, x, rstd], &[u(rows), u(d)], grid(gpu, d, 32));
}

/// RoPE tables on the device.
pub struct Rope {
    cos: Tensor,
    sin: Tensor,
    half: usize,
}

impl Rope {
    /// Uploads a CPU table.
    pub fn new(gpu: &Gpu, table: &rstar2_model::ops::rope::RopeTable) -> Self {
        let (cos, sin) = table.tables();
        Rope { cos: gpu.upload(cos), sin: gpu.upload(sin), half: table.half }
    }
}

fn rope(gpu: &Gpu, x: &Tensor, positions: &Tensor, rope: &Rope, rows: usize, heads: usize, sign: f64) {
    check("rope", "x", x, rows * heads * 2 * rope.half);
    gpu.dispatch(&kernels::ROPE, &[("SIGN", sign)], &[x, positions, &rope.cos, &rope.sin], &[u(rows), u(heads), u(rope.half)], grid(gpu, rows * heads * rope.half, 64));
}

/// Rotates x [rows, heads, head_dim] in place by position.
pub fn rope_forward(gpu: &Gpu, x: &Tensor, positions: &Tensor, table: &Rope, rows: usize, heads: usize) {
    rope(gpu, x, positions, table, rows, heads, 1.0);
}

/// Rotates the gradient back.
pub fn rope_backward(gpu: &Gpu, dx: &Tensor, positions: &Tensor, table: &Rope, rows: usize, heads: usize) {
    rope(gpu, dx, positions, table, rows, heads, -1.0);
}

/// out = silu(gate) * up over n elements.
pub fn swiglu_forward(gpu: &Gpu, out: &Tensor, gate: &Tensor, up: &Tensor, n: usize) {
    elementwise(gpu, &kernels::SWIGLU_FORWARD, &[out, gate, up], n, &[]);
}

/// dgate, dup (overwrite).
pub fn swiglu_backward(gpu: &Gpu, dgate: &Tensor, dup: &Tensor, dout: &Tensor, gate: &Tensor, up: &Tensor, n: usize) {
    elementwise(gpu, &kernels::SWIGLU_BACKWARD, &[dgate, dup, dout, gate, up], n, &[]);
}

/// out = a + b.
pub fn residual_forward(gpu: &Gpu, out: &Tensor, a: &Tensor, b: &Tensor, n: usize) {
    elementwise(gpu, &kernels::RESIDUAL_FORWARD, &[out, a, b], n, &[]);
}

/// da += dout.
pub fn residual_backward(gpu: &Gpu, da: &Tensor, dout: &Tensor, n: usize) {
    elementwise(gpu, &kernels::RESIDUAL_BACKWARD, &[da, dout], n, &[]);
}

/// The tiling of the flash-attention kernels: override constants and workgroups. A forward or
/// dq workgroup holds 64 / LANES (row, head) items, LANES threads each: the query heads of a KV
/// head's group (at most 8 per workgroup) times consecutive rows, with K/V tiles of KV_TILE
/// keys; a dk/dv workgroup holds 64 / LANES keys of one KV head, with query tiles as deep.
fn flash_layout(gpu: &Gpu, heads: Heads, rows: usize, kernel: Flash) -> ([(&'static str, f64); 4], [u32; 3]) {
    let lanes = if heads.dim > 128 { 8 } else { 4 };
    assert!(heads.dim <= 256 && heads.dim.is_multiple_of(lanes), "attention kernels take heads of at most 256 values, a multiple of 4 (of 8 past 128); this model has {}", heads.dim);
    let group = decode_group(heads);
    let items = 64 / lanes;
    let block_rows = items / group;
    // The deepest tile (a power of two, 4 to 32, at most 1024 values of K) whose workgroup
    // arrays fit the adapter.
    let limit = gpu.limits.max_compute_workgroup_storage_size as usize;
    let bytes = |tile: usize| {
        4 * match kernel {
            Flash::Forward => items * heads.dim + 2 * tile * heads.dim + items * tile,
            Flash::Dq => 2 * items * heads.dim + 2 * tile * heads.dim + items * tile,
            Flash::Dkdv => 2 * items * heads.dim + 2 * tile * heads.dim + 2 * tile + 2 * items * tile,
        }
    };
    let tile = [32, 16, 8, 4].into_iter().filter(|&t| t * heads.dim <= 1024.max(4 * heads.dim)).find(|&t| bytes(t) <= limit);
    let tile = tile.unwrap_or_else(|| panic!("{kernel:?} attention with heads of {} values needs {} bytes of workgroup memory; this adapter has {limit}", heads.dim, bytes(4)));
    let constants = [("HEAD_DIM", heads.dim as f64), ("GROUP", group as f64), ("KV_TILE", tile as f64), ("LANES", lanes as f64)];
    let groups = match kernel {
        Flash::Dkdv => [u(rows.div_ceil(items)), u(heads.kv), 1],
        _ => [u(rows.div_ceil(block_rows)), u(heads.q / group), 1],
    };
    (constants, groups)
}

/// The flash-attention kernels, for their tiling.
#[derive(Debug, Clone, Copy)]
enum Flash {
    Forward,
    Dq,
    Dkdv,
}

/// Causal attention over packed sequences: out [rows, q*dim], lse [rows, q] saved; start[r] is
/// the first row of r's sequence.
#[allow(clippy::too_many_arguments)]
pub fn attention_forward(gpu: &Gpu, out: &Tensor, lse: &Tensor, q: &Tensor, k: &Tensor, v: &Tensor, start: &Tensor, rows: usize, heads: Heads) {
    check("attention_forward", "lse", lse, rows * heads.q);
    if rows == 0 {
        return;
    }
    let (constants, groups) = flash_layout(gpu, heads, rows, Flash::Forward);
    let params = [u(rows), u(heads.q), u(heads.kv), f(1.0 / (heads.dim as f32).sqrt())];
    gpu.dispatch(&kernels::ATTENTION_FORWARD, &constants, &[out, lse, q, k, v, start], &params, groups);
}

/// dq, dk, dv (overwrite); end[r] is one past the last row of r's sequence.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    gpu: &Gpu,
    dq: &Tensor,
    dk: &Tensor,
    dv: &Tensor,
    dout: &Tensor,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    out: &Tensor,
    lse: &Tensor,
    start: &Tensor,
    end: &Tensor,
    rows: usize,
    heads: Heads,
) {
    if rows == 0 {
        return;
    }
    let delta = gpu.alloc(rows * heads.q);
    let p = [u(rows), u(heads.q), u(heads.kv), f(1.0 / (heads.dim as f32).sqrt())];
    let (constants, groups) = flash_layout(gpu, heads, rows, Flash::Dq);
    gpu.dispatch(&kernels::ATTENTION_BACKWARD_DQ, &constants, &[dq, &delta, dout, q, k, v, out, lse, start], &p, groups);
    let ([dim, _, (_, tile), lanes], groups) = flash_layout(gpu, heads, rows, Flash::Dkdv);
    gpu.dispatch(&kernels::ATTENTION_BACKWARD_DKDV, &[dim, ("Q_TILE", tile), lanes], &[dk, dv, dout, q, k, v, &delta, lse, end], &p, groups);
}

/// Attention of rows against the paged cache (see `attention_decode.wgsl`); `max_len` is the
/// longest row's context. The context is split in chunks where the rows and KV heads alone
/// would leave a real GPU idle (flash decoding), else taken whole.
#[allow(clippy::too_many_arguments)]
pub fn attention_decode(gpu: &Gpu, out: &Tensor, q: &Tensor, cache_k: &Tensor, cache_v: &Tensor, table: &Tensor, table_off: &Tensor, len: &Tensor, rows: usize, max_len: usize, heads: Heads) {
    let groups = rows * heads.q / decode_group(heads);
    let wanted = if gpu.is_software() { 1 } else { BUSY_WORKGROUPS.div_ceil(groups.max(1)) };
    // Chunks of at least 256 keys: shorter ones cost more in the combine than they gain.
    let chunk_len = max_len.div_ceil(wanted).max(256).next_multiple_of(64);
    attention_decode_chunked(gpu, chunk_len, out, q, cache_k, cache_v, table, table_off, len, rows, max_len, heads);
}

/// Query heads per workgroup of `attention_decode`: the largest divisor of a KV head's group
/// of at most 8.
fn decode_group(heads: Heads) -> usize {
    let group = heads.q / heads.kv;
    (1..=group.min(8)).rev().find(|g| group.is_multiple_of(*g)).expect("1 divides")
}

/// [`attention_decode`] with the context cut into chunks of `chunk_len` keys (a multiple of 64).
#[allow(clippy::too_many_arguments)]
pub fn attention_decode_chunked(
    gpu: &Gpu,
    chunk_len: usize,
    out: &Tensor,
    q: &Tensor,
    cache_k: &Tensor,
    cache_v: &Tensor,
    table: &Tensor,
    table_off: &Tensor,
    len: &Tensor,
    rows: usize,
    max_len: usize,
    heads: Heads,
) {
    assert!(heads.dim <= 256, "attention kernels hold a head of at most 256 values, this model has {}", heads.dim);
    assert!(chunk_len > 0 && chunk_len.is_multiple_of(64), "chunk_len {chunk_len}: a positive multiple of 64");
    if rows == 0 {
        return;
    }
    let chunks = max_len.div_ceil(chunk_len).max(1);
    let group = decode_group(heads);
    let constants = [("HEAD_DIM", heads.dim as f64), ("GROUP", group as f64)];
    let outputs = rows * heads.q * heads.dim;
    let lse_at = if chunks > 1 { outputs * chunks } else { 0 };
    let part = gpu.alloc(if chunks > 1 { lse_at + rows * heads.q * chunks } else { 1 });
    let params = [u(rows), u(heads.q), u(heads.kv), f(1.0 / (heads.dim as f32).sqrt()), u(chunk_len), u(chunks), u(lse_at)];
    gpu.dispatch(&kernels::ATTENTION_DECODE, &constants, &[out, &part, q, cache_k, cache_v, table, table_off, len], &params, [u(chunks), u(heads.q / group), u(rows)]);
    if chunks > 1 {
        gpu.dispatch(&kernels::ATTENTION_DECODE_COMBINE, &[], &[out, &part], &[u(rows), u(heads.q), u(heads.dim), u(chunks), u(lse_at)], grid(gpu, outputs, 64));
    }
}

/// cache[slot[r]] = x[r] for keys and values, rows of `width`.
#[allow(clippy::too_many_arguments)]
pub fn kv_write(gpu: &Gpu, cache_k: &Tensor, cache_v: &Tensor, k: &Tensor, v: &Tensor, slots: &Tensor, rows: usize, width: usize) {
    gpu.dispatch(&kernels::KV_WRITE, &[], &[cache_k, cache_v, k, v, slots], &[u(rows), u(width)], grid(gpu, rows * width, 64));
}

/// logprob[r] = log softmax(logits[r])[target[r]], saving lse[r]; logits past the binding
/// limit in windows of rows.
pub fn logprob_forward(gpu: &Gpu, logprob: &Tensor, lse: &Tensor, logits: &Tensor, targets: &Tensor, rows: usize, v: usize) {
    check("logprob_forward", "logits", logits, rows * v);
    let per = table_rows_per_window(gpu, v);
    let mut r0 = 0;
    while r0 < rows {
        let n = per.min(rows - r0);
        let (lv, shift) = gpu.window(logits, r0 * v, n * v);
        let views = [gpu.window(logprob, 0, rows).0, gpu.window(lse, 0, rows).0, lv, gpu.window(targets, 0, rows).0];
        gpu.dispatch_views(&kernels::LOGPROB_FORWARD, &[], &views, &[u(n), u(v), u(r0), u(shift)], grid(gpu, n, 1));
        r0 += n;
    }
}

/// dlogits (overwrite) from d(loss)/d(logprob), in windows of rows like the forward.
#[allow(clippy::too_many_arguments)]
pub fn logprob_backward(gpu: &Gpu, dlogits: &Tensor, dlogprob: &Tensor, logits: &Tensor, lse: &Tensor, targets: &Tensor, rows: usize, v: usize) {
    check("logprob_backward", "dlogits", dlogits, rows * v);
    let per = table_rows_per_window(gpu, v);
    let mut r0 = 0;
    while r0 < rows {
        let n = per.min(rows - r0);
        let ((dv, dshift), (lv, lshift)) = (gpu.window(dlogits, r0 * v, n * v), gpu.window(logits, r0 * v, n * v));
        assert_eq!(dshift, lshift, "logits and dlogits windows align alike");
        let views = [dv, gpu.window(dlogprob, 0, rows).0, lv, gpu.window(lse, 0, rows).0, gpu.window(targets, 0, rows).0];
        gpu.dispatch_views(&kernels::LOGPROB_BACKWARD, &[], &views, &[u(n), u(v), u(r0), u(lshift)], grid(gpu, n * v, 64));
        r0 += n;
    }
}

/// One draw per row of logits [rows, V] (see `sample.wgsl`): out[2r] = token, out[2r + 1] = the
/// bits of its log-probability. `uniforms` in [0, 1), one per row (unused when greedy).
pub fn sample(gpu: &Gpu, out: &Tensor, logits: &Tensor, uniforms: &Tensor, rows: usize, v: usize, temperature: f32) {
    check("sample", "out", out, 2 * rows);
    gpu.dispatch(&kernels::SAMPLE, &[], &[out, logits, uniforms], &[u(rows), u(v), f(temperature)], grid(gpu, rows, 1));
}

/// One AdamW update of one tensor (`step` counts from 1).
#[allow(clippy::too_many_arguments)]
pub fn adamw(gpu: &Gpu, param: &Tensor, m: &Tensor, v: &Tensor, grad: &Tensor, config: &rstar2_model::AdamWConfig, lr: f32, step: u64) {
    let n = param.len();
    let bc1 = 1.0 - config.beta1.powi(step as i32);
    let bc2_sqrt = (1.0 - config.beta2.powi(step as i32)).sqrt();
    let p = [f(lr), f(config.beta1), f(config.beta2), f(config.eps), f(config.weight_decay), f(bc1), f(bc2_sqrt)];
    elementwise(gpu, &kernels::ADAMW, &[param, m, v, grad], n, &p);
}

/// Global L2 norm of all `grads`, and scaling by min(1, max_norm / (norm + 1e-6)) when
/// `max_norm` is given; all on the device. Returns [norm, coef] (read it only when needed).
pub fn clip_grad_norm(gpu: &Gpu, grads: &[&Tensor], max_norm: Option<f32>) -> Tensor {
    // One partial sum per 4096 elements of each window (windows start at multiples of 4096).
    let mut windows = Vec::new();
    for g in grads {
        elementwise_windows(gpu, g.len(), |start, len| windows.push((*g, start, len, len.div_ceil(4096))));
    }
    let total: usize = windows.iter().map(|w| w.3).sum();
    let partial = gpu.alloc(total.max(1));
    let mut offset = 0;
    for &(g, start, len, chunks) in &windows {
        let (view, _) = gpu.window(g, start, len);
        let whole = gpu.window(&partial, 0, total.max(1)).0;
        gpu.dispatch_views(&kernels::GRAD_NORM_PARTIAL, &[], &[whole, view], &[u(len), u(offset)], [u(chunks), 1, 1]);
        offset += chunks;
    }
    let result = gpu.alloc(2);
    gpu.dispatch(&kernels::GRAD_NORM_FINISH, &[], &[&result, &partial], &[u(total), f(max_norm.unwrap_or(f32::MAX))], [1, 1, 1]);
    if max_norm.is_some() {
        for g in grads {
            elementwise_windows(gpu, g.len(), |start, len| {
                let views = [gpu.window(g, start, len).0, gpu.window(&result, 0, 2).0];
                gpu.dispatch_views(&kernels::GRAD_SCALE, &[], &views, &[u(len)], grid(gpu, len, 64));
            });
        }
    }
    result
}

/// Rows the fused decode kernels take at most (their accumulators are arrays of 32).
pub const DECODE_ROWS: usize = 32;

/// The pipeline's row bucket: the next power of two, so few pipelines cover every batch.
fn rows_bucket(m: usize) -> f64 {
    assert!((1..=DECODE_ROWS).contains(&m), "decode kernels take 1 to {DECODE_ROWS} rows, not {m}");
    m.next_power_of_two() as f64
}

/// Decoding's linear layer (see `decode_linear.wgsl`): c[m, n] = a[m, k] · wᵀ (+ bias), or
/// c += that with `residual`; a weight past the binding limit in windows of rows.
#[allow(clippy::too_many_arguments)]
pub fn decode_linear(gpu: &Gpu, c: &Tensor, a: &Tensor, w: &Tensor, bias: Option<&Tensor>, m: usize, n: usize, k: usize, residual: bool) {
    assert!(k.is_multiple_of(4), "decode_linear: k = {k} is not a multiple of 4");
    check("decode_linear", "C", c, m * n);
    check("decode_linear", "A", a, m * k);
    check("decode_linear", "W", w, n * k);
    let split = gpu.decode_split();
    let constants = [("ROWS", rows_bucket(m)), ("BIAS", f64::from(u8::from(bias.is_some()))), ("RESIDUAL", f64::from(u8::from(residual))), ("SPLIT", split as f64)];
    let per = (gpu.window_elems() / k).max(1).min(n);
    let mut j0 = 0;
    while j0 < n {
        let nb = per.min(n - j0);
        let (wv, wsh) = gpu.window(w, j0 * k, nb * k);
        let (cv, csh) = gpu.window(c, j0, (m - 1) * n + nb);
        let (bv, bsh) = match bias {
            Some(b) => gpu.window(b, j0, nb),
            None => gpu.window(a, 0, 4),
        };
        let views = [cv, gpu.window(a, 0, m * k).0, wv, bv];
        let params = [u(m), u(nb), u(k / 4), u(n), u(wsh / 4), u(csh), u(bsh)];
        if w.is_f16() {
            gpu.dispatch_views_f16_weights(&kernels::DECODE_LINEAR, &constants, &views, &params, grid(gpu, nb, 64 / split));
        } else {
            gpu.dispatch_views(&kernels::DECODE_LINEAR, &constants, &views, &params, grid(gpu, nb, 64 / split));
        }
        j0 += nb;
    }
}

/// Decoding's q, k and v projections in one pass (see `decode_qkv.wgsl`): qkv[m, qd + 2 kd].
#[allow(clippy::too_many_arguments)]
pub fn decode_qkv(gpu: &Gpu, qkv: &Tensor, a: &Tensor, w: [&Tensor; 3], bias: Option<[&Tensor; 3]>, m: usize, d: usize, qd: usize, kd: usize) {
    assert!(d.is_multiple_of(4), "decode_qkv: hidden size {d} is not a multiple of 4");
    check("decode_qkv", "qkv", qkv, m * (qd + 2 * kd));
    let split = gpu.decode_split();
    let constants = [("ROWS", rows_bucket(m)), ("BIAS", f64::from(u8::from(bias.is_some()))), ("SPLIT", split as f64)];
    let b = bias.unwrap_or([a, a, a]);
    let storage = [qkv, a, w[0], w[1], w[2], b[0], b[1], b[2]];
    let views: Vec<View<'_>> = storage.iter().map(|t| gpu.window(t, 0, t.len()).0).collect();
    let params = [u(m), u(qd), u(kd), u(d / 4)];
    if w[0].is_f16() {
        gpu.dispatch_views_f16_weights(&kernels::DECODE_QKV, &constants, &views, &params, grid(gpu, qd + 2 * kd, 64 / split));
    } else {
        gpu.dispatch_views(&kernels::DECODE_QKV, &constants, &views, &params, grid(gpu, qd + 2 * kd, 64 / split));
    }
}

/// After [`decode_qkv`]: per-head norm (Qwen3), RoPE, queries to `q`, keys and values into the
/// paged cache at `slots` (see `decode_rope_kv.wgsl`).
#[allow(clippy::too_many_arguments)]
pub fn decode_rope_kv(
    gpu: &Gpu,
    q: &Tensor,
    cache_k: &Tensor,
    cache_v: &Tensor,
    qkv: &Tensor,
    positions: &Tensor,
    slots: &Tensor,
    rope: &Rope,
    qk_norm: Option<(&Tensor, &Tensor)>,
    m: usize,
    heads: Heads,
    eps: f32,
) {
    assert!(heads.dim.is_multiple_of(2) && heads.dim / 2 == rope.half, "decode_rope_kv: head width {} against a RoPE table of half {}", heads.dim, rope.half);
    let (qn, kn) = qk_norm.unwrap_or((positions, positions));
    gpu.dispatch(
        &kernels::DECODE_ROPE_KV,
        &[("QK_NORM", f64::from(u8::from(qk_norm.is_some())))],
        &[q, cache_k, cache_v, qkv, positions, slots, &rope.cos, &rope.sin, qn, kn],
        &[u(m), u(heads.q), u(heads.kv), u(heads.dim), f(eps)],
        grid(gpu, m * (heads.q + heads.kv), 64),
    );
}

/// Decoding's gate and up projections with SwiGLU in one pass (see `decode_gate_up.wgsl`):
/// out[m, f].
#[allow(clippy::too_many_arguments)]
pub fn decode_gate_up(gpu: &Gpu, out: &Tensor, a: &Tensor, w_gate: &Tensor, w_up: &Tensor, m: usize, f: usize, k: usize) {
    assert!(k.is_multiple_of(4), "decode_gate_up: k = {k} is not a multiple of 4");
    check("decode_gate_up", "out", out, m * f);
    let storage = [out, a, w_gate, w_up];
    let views: Vec<View<'_>> = storage.iter().map(|t| gpu.window(t, 0, t.len()).0).collect();
    let split = gpu.decode_split();
    let (constants, params) = ([("ROWS", rows_bucket(m)), ("SPLIT", split as f64)], [u(m), u(f), u(k / 4)]);
    if w_gate.is_f16() {
        gpu.dispatch_views_f16_weights(&kernels::DECODE_GATE_UP, &constants, &views, &params, grid(gpu, f, 64 / split));
    } else {
        gpu.dispatch_views(&kernels::DECODE_GATE_UP, &constants, &views, &params, grid(gpu, f, 64 / split));
    }
}
