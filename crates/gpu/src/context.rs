//! The device: adapter choice, the adapter's own limits, and the host path every op records
//! through. Built so that a decoding or training step, once warm, creates nothing:
//!
//! - pipelines cached by kernel, weight type and override constants, each with an explicit
//!   layout shared by every kernel of the same binding signature;
//! - per-dispatch scalars in a uniform ring bound with a dynamic offset (written once per
//!   submission), so bind groups hold only storage buffers and are cached by what they bind;
//! - small uploads (token ids, positions, block tables) staged in an upload ring and copied in
//!   order with the recorded work, into pooled buffers;
//! - buffers pooled by size class, trimmed when a phase ends; read-back staging buffers pooled;
//! - one command encoder with one open compute pass until something is read back;
//! - counters of dispatches, submissions, buffers and bind groups created, device memory; and a
//!   profiler (timestamp queries where the adapter has them) of GPU and host time per kernel.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use web_time::Instant;

use crate::GpuError;
use crate::kernels::Kernel;
use crate::tensor::{Pool, Tensor, size_class};

/// One adapter as `cargo xtask devices` lists it.
#[derive(Debug, Clone)]
pub struct AdapterSummary {
    /// Index for `--device gpu:N`.
    pub index: usize,
    /// Adapter name, e.g. "NVIDIA H100" or "llvmpipe (LLVM 15.0.6, 256 bits)".
    pub name: String,
    /// Vulkan, Metal, Dx12 or Gl.
    pub backend: String,
    /// DiscreteGpu, IntegratedGpu, VirtualGpu, Cpu or Other.
    pub device_type: String,
    /// Driver and its version.
    pub driver: String,
    /// Whether `auto` may choose it (a real GPU, not a software rasterizer).
    pub is_real_gpu: bool,
    /// Whether it has `SHADER_F16`.
    pub shader_f16: bool,
    /// Subgroup sizes (smallest, largest) where it has `SUBGROUP`.
    pub subgroups: Option<(u32, u32)>,
    /// Whether it exposes wgpu's cooperative matrices (`EXPERIMENTAL_COOPERATIVE_MATRIX`).
    pub coop_matrix: bool,
    /// Largest storage binding in bytes.
    pub max_storage_binding: u64,
}

/// The one device every GPU test in a process shares (tests run on threads; a second device
/// would only compete for the same adapter). No adapter is a test failure, as CI requires: set
/// `RSTAR2_ALLOW_NO_GPU=1` to get `None` instead and run the rest of a suite on a machine that
/// cannot run WGSL at all (it says so loudly).
#[cfg(not(target_arch = "wasm32"))]
pub fn test_gpu() -> Option<Arc<Gpu>> {
    static GPU: std::sync::OnceLock<Option<Arc<Gpu>>> = std::sync::OnceLock::new();
    GPU.get_or_init(|| match Gpu::open(AdapterChoice::Any) {
        Ok(Some(g)) => {
            eprintln!("GPU tests on {} (subgroup reductions: {})", g.describe(), g.uses_subgroups());
            Some(Arc::new(g))
        }
        Ok(None) => None,
        Err(e) if std::env::var_os("RSTAR2_ALLOW_NO_GPU").is_some() => {
            eprintln!("!!! GPU tests NOT RUN: {e} (RSTAR2_ALLOW_NO_GPU is set)");
            None
        }
        Err(e) => panic!("{e}; set RSTAR2_ALLOW_NO_GPU=1 to run the other tests without them"),
    })
    .clone()
}

fn instance() -> wgpu::Instance {
    wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env())
}

/// Every adapter wgpu finds, Vulkan before GL for the same hardware, in a stable order.
pub(crate) async fn adapters() -> Vec<wgpu::Adapter> {
    let mut all = instance().enumerate_adapters(wgpu::Backends::all()).await;
    let rank = |b: wgpu::Backend| match b {
        wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12 => 0,
        _ => 1,
    };
    all.sort_by_key(|a| {
        let i = a.get_info();
        (rank(i.backend), i.device_type == wgpu::DeviceType::Cpu, i.name.clone())
    });
    all
}

pub(crate) fn is_real_gpu(info: &wgpu::AdapterInfo) -> bool {
    matches!(info.device_type, wgpu::DeviceType::DiscreteGpu | wgpu::DeviceType::IntegratedGpu | wgpu::DeviceType::VirtualGpu)
}

/// Lists the adapters wgpu can see.
#[cfg(not(target_arch = "wasm32"))]
pub fn list_adapters() -> Vec<AdapterSummary> {
    crate::block_on(adapters())
        .iter()
        .enumerate()
        .map(|(index, a)| {
            let info = a.get_info();
            AdapterSummary {
                index,
                name: info.name.clone(),
                backend: format!("{:?}", info.backend),
                device_type: format!("{:?}", info.device_type),
                driver: format!("{} {}", info.driver, info.driver_info).trim().to_string(),
                is_real_gpu: is_real_gpu(&info),
                shader_f16: a.features().contains(wgpu::Features::SHADER_F16),
                subgroups: a.features().contains(wgpu::Features::SUBGROUP).then_some((info.subgroup_min_size, info.subgroup_max_size)),
                coop_matrix: a.features().contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX),
                max_storage_binding: a.limits().max_storage_buffer_binding_size,
            }
        })
        .collect()
}

/// Which adapter to open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdapterChoice {
    /// The first real GPU; none means no GPU (the caller falls back to the CPU backend).
    Auto,
    /// The first adapter of any kind, software ones included (how tests find lavapipe).
    Any,
    /// Adapter N of [`list_adapters`].
    Index(usize),
}

/// Pipelines of one kernel and weight type, by override constants (a few each).
type Variants = Vec<(Vec<(&'static str, u64)>, Arc<Pipeline>)>;

/// A storage binding: a byte range of a tensor's buffer.
#[derive(Clone, Copy)]
pub(crate) struct View<'t> {
    pub tensor: &'t Tensor,
    pub offset: u64,
    pub size: u64,
}

/// How a kernel binds one slot (read from its WGSL source).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Slot {
    StorageRead,
    StorageWrite,
    Uniform,
}

/// The binding slots of a kernel, in binding order: `@group(0) @binding(N) var<...>` lines.
fn slots(source: &str) -> Vec<Slot> {
    let mut found: Vec<(u32, Slot)> = source
        .lines()
        .filter_map(|line| {
            let at = line.find("@binding(")?;
            let rest = &line[at + 9..];
            let n: u32 = rest[..rest.find(')')?].parse().ok()?;
            let slot = if rest.contains("var<uniform>") {
                Slot::Uniform
            } else if rest.contains("var<storage, read_write>") {
                Slot::StorageWrite
            } else if rest.contains("var<storage, read>") || rest.contains("var<storage>") {
                Slot::StorageRead
            } else {
                return None;
            };
            Some((n, slot))
        })
        .collect();
    found.sort_by_key(|s| s.0);
    assert!(found.iter().enumerate().all(|(i, s)| s.0 == i as u32), "kernel bindings are not 0..n: {found:?}");
    found.into_iter().map(|s| s.1).collect()
}

/// An explicit bind group layout (and its pipeline layout) shared by every kernel with the same
/// binding signature.
struct Layout {
    id: usize,
    bind_group: wgpu::BindGroupLayout,
    pipeline: wgpu::PipelineLayout,
    /// Storage slots, then whether the last slot is the uniform.
    storage: usize,
    uniform: bool,
}

struct Pipeline {
    pipeline: wgpu::ComputePipeline,
    layout: Arc<Layout>,
}

/// What a cached bind group binds: the layout and each storage range.
struct BindKey {
    layout: usize,
    ranges: Vec<(wgpu::Buffer, u64, u64)>,
}

impl BindKey {
    fn matches(&self, layout: usize, storage: &[View<'_>]) -> bool {
        self.layout == layout && self.ranges.len() == storage.len() && self.ranges.iter().zip(storage).all(|(r, v)| r.0 == *v.tensor.buffer() && r.1 == v.offset && r.2 == v.size)
    }
}

/// The bind group cache's hash of what a dispatch binds (computed without building a key).
fn bind_hash(layout: usize, storage: &[View<'_>]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    layout.hash(&mut h);
    for v in storage {
        v.tensor.buffer().hash(&mut h);
        (v.offset, v.size).hash(&mut h);
    }
    h.finish()
}

/// Bytes of one dispatch's scalars in the uniform ring (every kernel's `Params` fits).
const UNIFORM_BYTES: u64 = 256;
/// Size of the uniform ring: dispatches per submission before a flush is forced.
const UNIFORM_RING: u64 = 4 << 20;
/// Uploads at most this large go through the upload ring (larger ones get a buffer of their own).
const UPLOAD_RING: u64 = 4 << 20;
/// Cached bind groups at most; past this the cache starts over.
const BIND_GROUP_CACHE: usize = 8192;

/// The command encoder being recorded, its open compute pass (which must end before the encoder
/// records anything else), and what the submission will write into the rings first.
#[derive(Default)]
struct Recording {
    // Field order: the pass drops before the encoder.
    pass: Option<wgpu::ComputePass<'static>>,
    encoder: Option<wgpu::CommandEncoder>,
    uniforms: Vec<u8>,
    uploads: Vec<u8>,
    /// Kernel of each timestamped dispatch of this submission, in order.
    timed: Vec<&'static str>,
}

/// Counts since the device was opened (see [`Gpu::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GpuStats {
    /// Dispatches recorded.
    pub dispatches: u64,
    /// Command buffers submitted.
    pub submits: u64,
    /// Device buffers created (tensors, rings, read-back staging).
    pub buffers_created: u64,
    /// Bind groups created.
    pub bind_groups_created: u64,
    /// Bytes of tensor buffers the device holds now (in use or pooled).
    pub device_bytes: u64,
    /// The most `device_bytes` ever was.
    pub peak_device_bytes: u64,
    /// Bytes of pooled (free) tensor buffers.
    pub pooled_bytes: u64,
    /// Seconds the host spent waiting for the device (read-backs and syncs).
    pub wait_seconds: f64,
    /// Seconds the host spent encoding: recording dispatches, copies and uploads, and
    /// finishing and submitting command buffers.
    pub encode_seconds: f64,
}

/// Time per kernel family: GPU time from timestamp queries (where the adapter has them) and host
/// time spent recording.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KernelTime {
    /// Kernel file stem.
    pub kernel: &'static str,
    /// Dispatches.
    pub dispatches: u64,
    /// Seconds on the GPU (0 without timestamp queries).
    pub gpu_seconds: f64,
    /// Seconds the host spent recording them.
    pub host_seconds: f64,
}

/// Timestamp queries around every dispatch, resolved at each submission.
struct Profiler {
    /// None: the adapter has no timestamps inside compute passes (host times only).
    queries: Option<(wgpu::QuerySet, wgpu::Buffer, wgpu::Buffer)>,
    times: HashMap<&'static str, KernelTime>,
}

/// Timestamped dispatches per submission at most (two queries each).
const PROFILED_DISPATCHES: u32 = 2048;

/// An open device with its queue, caches and the encoder being recorded.
pub struct Gpu {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    /// What was opened.
    pub info: wgpu::AdapterInfo,
    /// The limits requested (the adapter's own).
    pub limits: wgpu::Limits,
    binding_limit: u64,
    pipelines: Mutex<HashMap<(&'static str, crate::kernels::Variant), Variants>>,
    /// Whether kernels use their subgroup reductions (the adapter has SUBGROUP with subgroups
    /// of at most 64 invocations, and they were not turned off).
    subgroups: bool,
    /// Whether matmul tiles are chosen by timing the candidates once per shape.
    autotune: std::sync::atomic::AtomicBool,
    /// Whether matmul may use the cooperative-matrix kernel (the adapter has it and it passed
    /// the check against the tiled kernel).
    coop_matrix: std::sync::atomic::AtomicBool,
    /// Threads per output column in the decode kernels.
    decode_split: std::sync::atomic::AtomicUsize,
    /// Autotuned matmul tiles by shape.
    pub(crate) matmul_tiles: Mutex<HashMap<crate::tile::MatmulShape, crate::tile::MatmulTile>>,
    /// The file autotuned tiles persist in, by adapter, across runs.
    autotune_cache: Mutex<Option<std::path::PathBuf>>,
    layouts: Mutex<HashMap<Vec<Slot>, Arc<Layout>>>,
    bind_groups: Mutex<HashMap<u64, Vec<(BindKey, wgpu::BindGroup)>>>,
    pub(crate) pool: Arc<Pool>,
    staging: Mutex<HashMap<u64, Vec<wgpu::Buffer>>>,
    uniform_ring: wgpu::Buffer,
    upload_ring: wgpu::Buffer,
    /// Bytes between consecutive dispatches' scalars (the adapter's dynamic-offset alignment).
    uniform_stride: u64,
    recording: Mutex<Recording>,
    profiler: Mutex<Option<Profiler>>,
    profiling: std::sync::atomic::AtomicBool,
    dispatches: AtomicU64,
    submits: AtomicU64,
    bind_groups_created: AtomicU64,
    wait_nanos: AtomicU64,
    encode_nanos: AtomicU64,
}

impl Gpu {
    /// The device on `adapter`, set up but for the checks [`Gpu::open`] makes (in `open.rs`,
    /// which runs kernels).
    pub(crate) async fn connect(adapter: wgpu::Adapter) -> Result<Gpu, GpuError> {
        let info = adapter.get_info();
        // wgpu's defaults cap buffers at 256 MiB and workgroups at 256 invocations; real models
        // need what the adapter offers.
        let limits = adapter.limits();
        let wanted = wgpu::Features::SHADER_F16 | wgpu::Features::SUBGROUP | wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES;
        // Subgroup reductions assume a subgroup fits in a 64-invocation workgroup.
        let subgroups = adapter.features().contains(wgpu::Features::SUBGROUP) && (1..=64).contains(&info.subgroup_max_size) && std::env::var_os("RSTAR2_GPU_SUBGROUPS").is_none_or(|v| v != "0");
        // Cooperative matrices where the adapter has wgpu's one configuration (8x8x8, f32 in
        // and out) and every subgroup has the same size (the kernel's workgroup is one subgroup).
        let coop = adapter.features().contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX)
            && info.subgroup_min_size == info.subgroup_max_size
            && adapter
                .cooperative_matrix_properties()
                .iter()
                .any(|p| (p.m_size, p.n_size, p.k_size) == (8, 8, 8) && p.ab_type == wgpu::CooperativeScalarType::F32 && p.cr_type == wgpu::CooperativeScalarType::F32)
            && std::env::var_os("RSTAR2_GPU_COOP").is_none_or(|v| v != "0")
            // Checked against the tiled kernel with a blocking read-back (and the web has none).
            && cfg!(not(target_arch = "wasm32"));
        let (features, experimental) = if coop {
            // SAFETY: wgpu's experimental features may have bugs; the one requested is
            // cooperative matrices, used by one kernel that is checked against the tiled kernel
            // on this device before any use (and turned off if it disagrees).
            (adapter.features() & wanted | wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX, unsafe { wgpu::ExperimentalFeatures::enabled() })
        } else {
            (adapter.features() & wanted, wgpu::ExperimentalFeatures::disabled())
        };
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("rstar2"),
                required_features: features,
                required_limits: limits.clone(),
                experimental_features: experimental,
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| GpuError::Device { adapter: info.name.clone(), message: e.to_string() })?;
        let uniform_stride = UNIFORM_BYTES.max(u64::from(limits.min_uniform_buffer_offset_alignment));
        let ring = |label, size, usage| device.create_buffer(&wgpu::BufferDescriptor { label: Some(label), size, usage: usage | wgpu::BufferUsages::COPY_DST, mapped_at_creation: false });
        let uniform_ring = ring("uniform ring", UNIFORM_RING, wgpu::BufferUsages::UNIFORM);
        let upload_ring = ring("upload ring", UPLOAD_RING, wgpu::BufferUsages::COPY_SRC);
        // In a browser wgpu's handles are not Send: the page's one thread shares the pool.
        #[cfg_attr(target_arch = "wasm32", allow(clippy::arc_with_non_send_sync))]
        let pool = Arc::new(Pool::default());
        let gpu = Gpu {
            binding_limit: limits.max_storage_buffer_binding_size,
            limits,
            pipelines: Mutex::new(HashMap::new()),
            subgroups,
            // Tuning times candidates between blocking syncs, which a browser does not have.
            autotune: std::sync::atomic::AtomicBool::new(std::env::var("RSTAR2_GPU_AUTOTUNE").map_or(is_real_gpu(&info), |v| v != "0") && cfg!(not(target_arch = "wasm32"))),
            matmul_tiles: Mutex::new(HashMap::new()),
            autotune_cache: Mutex::new(None),
            coop_matrix: std::sync::atomic::AtomicBool::new(coop),
            decode_split: std::sync::atomic::AtomicUsize::new(if is_real_gpu(&info) { 16 } else { 1 }),
            layouts: Mutex::new(HashMap::new()),
            bind_groups: Mutex::new(HashMap::new()),
            pool,
            staging: Mutex::new(HashMap::new()),
            uniform_ring,
            upload_ring,
            uniform_stride,
            recording: Mutex::new(Recording::default()),
            profiler: Mutex::new(None),
            profiling: std::sync::atomic::AtomicBool::new(false),
            dispatches: AtomicU64::new(0),
            submits: AtomicU64::new(0),
            bind_groups_created: AtomicU64::new(0),
            wait_nanos: AtomicU64::new(0),
            encode_nanos: AtomicU64::new(0),
            device,
            queue,
            info,
        };
        gpu.pool.created.fetch_add(2, Ordering::Relaxed);
        gpu.set_autotune_cache(default_autotune_cache());
        Ok(gpu)
    }

    /// "name (backend, type)".
    pub fn describe(&self) -> String {
        // Browsers do not name their WebGPU adapter.
        let name = if self.info.name.is_empty() { "unnamed adapter" } else { &self.info.name };
        format!("{name} ({:?}, {:?})", self.info.backend, self.info.device_type)
    }

    /// Whether this adapter is a software rasterizer (lavapipe, llvmpipe, WARP).
    pub fn is_software(&self) -> bool {
        !is_real_gpu(&self.info)
    }

    /// Counts since the device was opened, and device memory now.
    pub fn stats(&self) -> GpuStats {
        GpuStats {
            dispatches: self.dispatches.load(Ordering::Relaxed),
            submits: self.submits.load(Ordering::Relaxed),
            buffers_created: self.pool.created.load(Ordering::Relaxed),
            bind_groups_created: self.bind_groups_created.load(Ordering::Relaxed),
            device_bytes: self.pool.live_bytes.load(Ordering::Relaxed),
            peak_device_bytes: self.pool.peak_bytes.load(Ordering::Relaxed),
            pooled_bytes: self.pool.pooled_bytes(),
            wait_seconds: self.wait_nanos.load(Ordering::Relaxed) as f64 * 1e-9,
            encode_seconds: self.encode_nanos.load(Ordering::Relaxed) as f64 * 1e-9,
        }
    }

    /// Ends a phase (rollouts to training and back): frees pooled buffers and cached bind groups
    /// and read-back staging, so memory follows what the next phase needs. Returns the tensor
    /// bytes freed.
    pub fn trim(&self) -> u64 {
        self.flush();
        self.bind_groups.lock().expect("bind group cache").clear();
        self.staging.lock().expect("staging pool").clear();
        self.pool.trim()
    }

    /// Records GPU time per kernel family from now on (timestamp queries inside compute passes
    /// where the adapter has them; host recording time always). `RSTAR2_GPU_PROFILE=1` turns it
    /// on for any command.
    pub fn enable_profiling(&self) {
        let mut profiler = self.profiler.lock().expect("profiler");
        if profiler.is_some() {
            return;
        }
        let features = self.device.features();
        // Each submission's timestamps are read back at once, blocking: not in a browser.
        let timestamps = features.contains(wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES) && cfg!(not(target_arch = "wasm32"));
        let queries = timestamps.then(|| {
            let count = 2 * PROFILED_DISPATCHES;
            let set = self.device.create_query_set(&wgpu::QuerySetDescriptor { label: Some("profiler"), ty: wgpu::QueryType::Timestamp, count });
            let bytes = u64::from(count) * 8;
            let resolve = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("profiler resolve"),
                size: bytes,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            let read = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("profiler read"),
                size: bytes,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            self.pool.created.fetch_add(2, Ordering::Relaxed);
            (set, resolve, read)
        });
        *profiler = Some(Profiler { queries, times: HashMap::new() });
        self.profiling.store(true, Ordering::Relaxed);
    }

    /// Whether GPU times come from timestamp queries (else the profile has host times only).
    pub fn has_gpu_timestamps(&self) -> bool {
        self.profiler.lock().expect("profiler").as_ref().is_some_and(|p| p.queries.is_some())
    }

    /// The profile so far, slowest kernel family first (empty unless profiling is on); the
    /// work recorded is submitted and waited for first.
    pub fn profile(&self) -> Vec<KernelTime> {
        self.sync();
        let profiler = self.profiler.lock().expect("profiler");
        let mut out: Vec<KernelTime> = profiler.as_ref().map(|p| p.times.values().cloned().collect()).unwrap_or_default();
        out.sort_by(|a, b| (b.gpu_seconds + b.host_seconds).total_cmp(&(a.gpu_seconds + a.host_seconds)));
        out
    }

    /// The profile as a table (kernel family, dispatches, GPU and host milliseconds, share of
    /// GPU time), or None when profiling is off.
    pub fn profile_report(&self) -> Option<String> {
        if self.profiler.lock().expect("profiler").is_none() {
            return None;
        }
        let rows = self.profile();
        let (gpu, host): (f64, f64) = rows.iter().fold((0.0, 0.0), |(g, h), r| (g + r.gpu_seconds, h + r.host_seconds));
        let mut out = format!(
            "GPU profile of {} ({}):\n",
            self.describe(),
            if self.has_gpu_timestamps() { "GPU time from timestamp queries" } else { "no timestamp queries inside passes on this adapter: host recording time only" }
        );
        out += &format!("{:<26} {:>10} {:>12} {:>8} {:>12}\n", "kernel", "dispatches", "GPU ms", "GPU %", "host ms");
        for r in &rows {
            out += &format!("{:<26} {:>10} {:>12.2} {:>7.1}% {:>12.2}\n", r.kernel, r.dispatches, r.gpu_seconds * 1e3, 100.0 * r.gpu_seconds / gpu.max(1e-12), r.host_seconds * 1e3);
        }
        out += &format!("{:<26} {:>10} {:>12.2} {:>8} {:>12.2}\n", "all", rows.iter().map(|r| r.dispatches).sum::<u64>(), gpu * 1e3, "", host * 1e3);
        Some(out)
    }

    /// The explicit layout of a binding signature.
    fn layout(&self, slots: &[Slot]) -> Arc<Layout> {
        let mut layouts = self.layouts.lock().expect("layout cache");
        let id = layouts.len();
        layouts
            .entry(slots.to_vec())
            .or_insert_with(|| {
                let entries: Vec<wgpu::BindGroupLayoutEntry> = slots
                    .iter()
                    .enumerate()
                    .map(|(i, slot)| wgpu::BindGroupLayoutEntry {
                        binding: i as u32,
                        visibility: wgpu::ShaderStages::COMPUTE,
                        ty: match slot {
                            Slot::Uniform => wgpu::BindingType::Buffer { ty: wgpu::BufferBindingType::Uniform, has_dynamic_offset: true, min_binding_size: None },
                            Slot::StorageRead | Slot::StorageWrite => {
                                wgpu::BindingType::Buffer { ty: wgpu::BufferBindingType::Storage { read_only: *slot == Slot::StorageRead }, has_dynamic_offset: false, min_binding_size: None }
                            }
                        },
                        count: None,
                    })
                    .collect();
                let bind_group = self.device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: Some("rstar2 kernels"), entries: &entries });
                let pipeline = self.device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor { label: Some("rstar2 kernels"), bind_group_layouts: &[Some(&bind_group)], immediate_size: 0 });
                let uniform = slots.last() == Some(&Slot::Uniform);
                assert!(slots.iter().filter(|s| **s == Slot::Uniform).count() == usize::from(uniform), "a kernel's one uniform comes last");
                Arc::new(Layout { id, bind_group, pipeline, storage: slots.len() - usize::from(uniform), uniform })
            })
            .clone()
    }

    fn pipeline(&self, kernel: &Kernel, f16_weights: bool, constants: &[(&'static str, f64)]) -> Arc<Pipeline> {
        let same = |c: &[(&'static str, u64)]| c.len() == constants.len() && c.iter().zip(constants).all(|(a, b)| a.0 == b.0 && a.1 == b.1.to_bits());
        let mut cache = self.pipelines.lock().expect("pipeline cache");
        // The subgroup flag is the device's: kernels without a subgroup snippet build the same.
        let variant = crate::kernels::Variant { f16_weights, subgroups: self.subgroups };
        let variants = cache.entry((kernel.name, variant)).or_default();
        if let Some((_, p)) = variants.iter().find(|(c, _)| same(c)) {
            return p.clone();
        }
        let source = kernel.wgsl(variant);
        let layout = self.layout(&slots(&source));
        // Bounds checks stay (no kernel proves its indices in range); the loop bounding that
        // wgpu adds for Vulkan by default goes: every loop here is bounded by a parameter.
        let mut checks = wgpu::ShaderRuntimeChecks::checked();
        checks.force_loop_bounding = false;
        // SAFETY: the kernels are this crate's own; their loops all terminate (bounded by
        // dispatch parameters), which is what disabling loop bounding requires.
        let module = unsafe { self.device.create_shader_module_trusted(wgpu::ShaderModuleDescriptor { label: Some(kernel.name), source: wgpu::ShaderSource::Wgsl(source.into()) }, checks) };
        let pipeline = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(kernel.name),
            layout: Some(&layout.pipeline),
            module: &module,
            entry_point: Some("main"),
            compilation_options: wgpu::PipelineCompilationOptions { constants, zero_initialize_workgroup_memory: false },
            cache: None,
        });
        let p = Arc::new(Pipeline { pipeline, layout });
        variants.push((constants.iter().map(|&(n, v)| (n, v.to_bits())).collect(), p.clone()));
        p
    }

    /// The bind group of these storage ranges (and the uniform ring) in `layout`: cached, so a
    /// step that binds the same buffers as the last one creates none.
    fn bind_group(&self, layout: &Layout, storage: &[View<'_>]) -> wgpu::BindGroup {
        assert_eq!(storage.len(), layout.storage, "kernel binds {} storage buffers, {} given", layout.storage, storage.len());
        let hash = bind_hash(layout.id, storage);
        let mut cache = self.bind_groups.lock().expect("bind group cache");
        if let Some((_, g)) = cache.get(&hash).and_then(|v| v.iter().find(|(k, _)| k.matches(layout.id, storage))) {
            return g.clone();
        }
        if cache.len() >= BIND_GROUP_CACHE {
            cache.clear();
        }
        let mut entries: Vec<wgpu::BindGroupEntry> = storage
            .iter()
            .enumerate()
            .map(|(i, v)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding { buffer: v.tensor.buffer(), offset: v.offset, size: std::num::NonZeroU64::new(v.size) }),
            })
            .collect();
        if layout.uniform {
            entries.push(wgpu::BindGroupEntry {
                binding: storage.len() as u32,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding { buffer: &self.uniform_ring, offset: 0, size: std::num::NonZeroU64::new(UNIFORM_BYTES) }),
            });
        }
        let group = self.device.create_bind_group(&wgpu::BindGroupDescriptor { label: Some("rstar2 kernels"), layout: &layout.bind_group, entries: &entries });
        self.bind_groups_created.fetch_add(1, Ordering::Relaxed);
        let key = BindKey { layout: layout.id, ranges: storage.iter().map(|v| (v.tensor.buffer().clone(), v.offset, v.size)).collect() };
        cache.entry(hash).or_default().push((key, group.clone()));
        group
    }

    /// Records one dispatch of `kernel` with whole tensors bound in binding order (0, 1, ...),
    /// then the uniform `params` (as u32 words; f32 through `to_bits`) at the next binding.
    pub(crate) fn dispatch(&self, kernel: &Kernel, constants: &[(&'static str, f64)], storage: &[&Tensor], params: &[u32], groups: [u32; 3]) {
        let views: Vec<View<'_>> = storage
            .iter()
            .map(|t| {
                let bytes = t.bytes();
                assert!(
                    bytes <= self.binding_limit,
                    "{}: a tensor of {} elements ({bytes} bytes) is over the adapter's {} byte storage binding and this op binds it whole",
                    kernel.name,
                    t.len(),
                    self.binding_limit
                );
                View { tensor: t, offset: t.offset(), size: (t.buffer().size() - t.offset()).min(self.binding_limit) }
            })
            .collect();
        self.dispatch_views(kernel, constants, &views, params, groups);
    }

    /// Whether matmul tiles are autotuned: on by default on real GPUs (`RSTAR2_GPU_AUTOTUNE=0|1`
    /// overrides), off on software adapters, where a fixed choice keeps runs reproducible.
    pub fn autotunes(&self) -> bool {
        self.autotune.load(Ordering::Relaxed)
    }

    /// Turns matmul autotuning on or off from now on (tiles already tuned stay cached).
    pub fn set_autotune(&self, on: bool) {
        self.autotune.store(on, Ordering::Relaxed);
    }

    /// Where autotuned tiles persist from now on (`None`: nowhere); the tiles known are then
    /// the ones this adapter has there. The default is `RSTAR2_GPU_AUTOTUNE_CACHE`, else
    /// `$XDG_CACHE_HOME/rstar2/gpu-autotune.json` or `~/.cache/rstar2/gpu-autotune.json`. An
    /// unreadable or malformed file is ignored (and rewritten by the next tuning).
    pub fn set_autotune_cache(&self, path: Option<std::path::PathBuf>) {
        let known = path.as_deref().map(|p| read_autotune_cache(p).remove(&self.adapter_key()).unwrap_or_default()).unwrap_or_default();
        let mut tiles = self.matmul_tiles.lock().expect("tile cache");
        tiles.clear();
        tiles.extend(known);
        *self.autotune_cache.lock().expect("autotune cache") = path;
    }

    /// Writes this adapter's tuned tiles into the cache file (other adapters' entries kept),
    /// atomically; a failure only costs retuning next time, so it is reported and ignored.
    pub(crate) fn save_autotune(&self) {
        let Some(path) = self.autotune_cache.lock().expect("autotune cache").clone() else { return };
        let mut all = read_autotune_cache(&path);
        all.insert(self.adapter_key(), self.matmul_tiles.lock().expect("tile cache").iter().map(|(s, t)| (*s, *t)).collect());
        let written = (|| -> std::io::Result<()> {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let tmp = path.with_extension("json.partial");
            std::fs::write(&tmp, serde_json::to_vec(&all.into_iter().collect::<Vec<_>>()).map_err(std::io::Error::other)?)?;
            std::fs::rename(&tmp, &path)
        })();
        if let Err(e) = written {
            eprintln!("rstar2-gpu: could not save autotuned tiles to {}: {e}", path.display());
        }
    }

    /// Identifies the adapter and driver the tuned tiles were measured on.
    fn adapter_key(&self) -> String {
        let i = &self.info;
        format!("{} | {:?} | {:04x}:{:04x} | {} {}", i.name, i.backend, i.vendor, i.device, i.driver, i.driver_info)
    }

    /// The autotuned matmul tiles so far: (m rounded up to a power of two, n, k, tile).
    pub fn tuned_matmul_tiles(&self) -> Vec<(usize, usize, usize, crate::tile::MatmulTile)> {
        let mut v: Vec<_> = self.matmul_tiles.lock().expect("tile cache").iter().map(|(s, t)| (s.m, s.n, s.k, *t)).collect();
        v.sort_by_key(|x| (x.0, x.1, x.2));
        v
    }

    /// Whether matmul may use cooperative matrices here (see [`crate::tile::MatmulTile::COOP`]).
    pub fn has_coop_matrix(&self) -> bool {
        self.coop_matrix.load(Ordering::Relaxed)
    }

    /// Stops matmul from using cooperative matrices (they failed the check on this device).
    pub(crate) fn disable_coop_matrix(&self) {
        self.coop_matrix.store(false, Ordering::Relaxed);
    }

    /// The adapter's subgroup size (its largest, where it has several).
    pub fn subgroup_size(&self) -> u32 {
        self.info.subgroup_max_size
    }

    /// Threads that share each output column of the decode kernels (`decode_linear`, `_qkv`,
    /// `_gate_up`): 16 on real GPUs, so neighbouring threads read neighbouring parts of a weight
    /// row; 1 on CPU adapters, where a thread streaming a whole row needs no reduction.
    pub fn decode_split(&self) -> usize {
        self.decode_split.load(Ordering::Relaxed)
    }

    /// Sets the decode kernels' threads per column (a power of two up to 64), e.g. so tests on a
    /// CPU adapter run the GPU layout.
    pub fn set_decode_split(&self, split: usize) {
        assert!(split.is_power_of_two() && split <= 64, "decode split {split}: a power of two up to 64");
        self.decode_split.store(split, Ordering::Relaxed);
    }

    /// Whether kernels reduce with subgroup operations on this device.
    pub fn uses_subgroups(&self) -> bool {
        self.subgroups
    }

    /// Reduces through workgroup memory from now on even where the adapter has subgroups, so
    /// tests exercise both versions of every reduction (`RSTAR2_GPU_SUBGROUPS=0` does the same
    /// for a whole process).
    pub fn disable_subgroups(&mut self) {
        self.subgroups = false;
    }

    /// Largest storage binding in bytes (the adapter's, or less for tests).
    pub fn binding_limit(&self) -> u64 {
        self.binding_limit
    }

    /// Binds at most `bytes` per storage binding from now on, so tests on any adapter exercise
    /// the windowed paths that large models take.
    pub fn limit_bindings(&mut self, bytes: u64) {
        assert!(bytes >= 4 * u64::from(self.limits.min_storage_buffer_offset_alignment), "binding limit {bytes} too small");
        self.binding_limit = bytes.min(self.limits.max_storage_buffer_binding_size);
    }

    /// Elements a window may span so that any start (aligned down) still fits the binding.
    pub(crate) fn window_elems(&self) -> usize {
        ((self.binding_limit - u64::from(self.limits.min_storage_buffer_offset_alignment)) / 4) as usize
    }

    /// A binding of elements `start .. start + len` of `t`: the binding starts at the aligned
    /// offset at or below `start`; the returned shift is where `start` sits inside it.
    pub(crate) fn window<'t>(&self, t: &'t Tensor, start: usize, len: usize) -> (View<'t>, usize) {
        assert!(start + len <= t.len().max(1) && len <= self.window_elems(), "window {start}+{len} of {} (window at most {})", t.len(), self.window_elems());
        let align = u64::from(self.limits.min_storage_buffer_offset_alignment);
        let elem = if t.is_f16() { 2 } else { 4 };
        let offset = (t.offset() + start as u64 * elem) / align * align;
        let shift = ((t.offset() + start as u64 * elem - offset) / elem) as usize;
        // The binding runs to the end of the buffer (or the binding limit): kernels index by
        // their parameters, never by the binding's length, and a binding that depends only on
        // where it starts keeps the bind group cache warm while lengths change step to step.
        debug_assert!(((shift + len.max(1)) as u64 * elem).div_ceil(4) * 4 <= self.binding_limit);
        (View { tensor: t, offset, size: (t.buffer().size() - offset).min(self.binding_limit) }, shift)
    }

    /// Records one dispatch with explicit bindings (see [`Gpu::window`]).
    pub(crate) fn dispatch_views(&self, kernel: &Kernel, constants: &[(&'static str, f64)], storage: &[View<'_>], params: &[u32], groups: [u32; 3]) {
        self.record(kernel, false, constants, storage, params, groups);
    }

    /// [`Gpu::dispatch_views`] with the kernel's f16-weights variant.
    pub(crate) fn dispatch_views_f16_weights(&self, kernel: &Kernel, constants: &[(&'static str, f64)], storage: &[View<'_>], params: &[u32], groups: [u32; 3]) {
        self.record(kernel, true, constants, storage, params, groups);
    }

    fn record(&self, kernel: &Kernel, f16_weights: bool, constants: &[(&'static str, f64)], storage: &[View<'_>], params: &[u32], groups: [u32; 3]) {
        if groups.contains(&0) {
            return;
        }
        let profiling = self.profiling.load(Ordering::Relaxed);
        let start = Instant::now();
        let max = self.limits.max_compute_workgroups_per_dimension;
        assert!(groups.iter().all(|&g| g <= max), "{}: {groups:?} workgroups exceed the adapter's {max} per dimension", kernel.name);
        assert!(params.len() * 4 <= UNIFORM_BYTES as usize, "{}: {} parameter words", kernel.name, params.len());
        let pipeline = self.pipeline(kernel, f16_weights, constants);
        let bind_group = self.bind_group(&pipeline.layout, storage);
        let mut rec = self.recording.lock().expect("encoder");
        if pipeline.layout.uniform && rec.uniforms.len() as u64 + self.uniform_stride > UNIFORM_RING {
            self.submit(&mut rec);
        }
        let offset = rec.uniforms.len() as u32;
        if pipeline.layout.uniform {
            rec.uniforms.extend_from_slice(bytemuck::cast_slice(params));
            rec.uniforms.resize(offset as usize + self.uniform_stride as usize, 0);
        }
        let timed = if profiling { self.profiler.lock().expect("profiler").as_ref().and_then(|p| p.queries.as_ref()).map(|q| q.0.clone()) } else { None };
        if timed.is_some() && rec.timed.len() as u32 >= PROFILED_DISPATCHES {
            self.submit(&mut rec);
        }
        let index = rec.timed.len() as u32;
        let pass = self.pass(&mut rec);
        if let Some(set) = &timed {
            pass.write_timestamp(set, 2 * index);
        }
        pass.set_pipeline(&pipeline.pipeline);
        let offsets = [offset];
        pass.set_bind_group(0, &bind_group, if pipeline.layout.uniform { &offsets[..] } else { &[] });
        pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        if let Some(set) = &timed {
            pass.write_timestamp(set, 2 * index + 1);
            rec.timed.push(kernel.name);
        }
        drop(rec);
        self.dispatches.fetch_add(1, Ordering::Relaxed);
        let elapsed = start.elapsed();
        self.encode_nanos.fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
        if profiling && let Some(p) = self.profiler.lock().expect("profiler").as_mut() {
            let t = p.times.entry(kernel.name).or_insert_with(|| KernelTime { kernel: kernel.name, ..Default::default() });
            t.dispatches += 1;
            t.host_seconds += elapsed.as_secs_f64();
        }
    }

    /// The open compute pass, opening one (and the encoder) if needed: consecutive dispatches
    /// share a pass (wgpu orders them by their buffer usage).
    fn pass<'r>(&self, rec: &'r mut Recording) -> &'r mut wgpu::ComputePass<'static> {
        if rec.pass.is_none() {
            let pass = self.encoder(rec).begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("rstar2 ops"), timestamp_writes: None }).forget_lifetime();
            rec.pass = Some(pass);
        }
        rec.pass.as_mut().expect("opened above")
    }

    /// The encoder being recorded, opened if needed (an open compute pass is not ended).
    fn encoder<'r>(&self, rec: &'r mut Recording) -> &'r mut wgpu::CommandEncoder {
        rec.encoder.get_or_insert_with(|| self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("rstar2 ops") }))
    }

    /// Runs `f` on the encoder, with no compute pass open (copies and clears).
    fn with_encoder<R>(&self, f: impl FnOnce(&mut wgpu::CommandEncoder) -> R) -> R {
        let mut rec = self.recording.lock().expect("encoder");
        rec.pass = None;
        f(self.encoder(&mut rec))
    }

    /// Zeroes a tensor (recorded in order with the dispatches).
    pub fn zero(&self, t: &Tensor) {
        self.with_encoder(|enc| enc.clear_buffer(t.buffer(), t.offset(), Some(t.bytes())));
    }

    /// Copies `len` elements of `src` from `src_offset` to `dst` at `dst_offset` (recorded in
    /// order with the dispatches).
    pub fn copy_range(&self, src: &Tensor, src_offset: usize, dst: &Tensor, dst_offset: usize, len: usize) {
        assert!(src_offset + len <= src.len() && dst_offset + len <= dst.len(), "copy: {len} elements {src_offset}->{dst_offset} between {} and {}", src.len(), dst.len());
        self.with_encoder(|enc| enc.copy_buffer_to_buffer(src.buffer(), src.offset() + (src_offset * 4) as u64, dst.buffer(), dst.offset() + (dst_offset * 4) as u64, Some((len * 4) as u64)));
    }

    /// Submits what has been recorded: the rings' contents first, then the commands.
    pub fn flush(&self) {
        let mut rec = self.recording.lock().expect("encoder");
        self.submit(&mut rec);
    }

    fn submit(&self, rec: &mut Recording) {
        rec.pass = None;
        let Some(mut enc) = rec.encoder.take() else { return };
        if !rec.uniforms.is_empty() {
            self.queue.write_buffer(&self.uniform_ring, 0, &rec.uniforms);
            rec.uniforms.clear();
        }
        if !rec.uploads.is_empty() {
            self.queue.write_buffer(&self.upload_ring, 0, &rec.uploads);
            rec.uploads.clear();
        }
        let timed = std::mem::take(&mut rec.timed);
        let profiler = self.profiler.lock().expect("profiler");
        let queries = profiler.as_ref().and_then(|p| p.queries.as_ref()).filter(|_| !timed.is_empty());
        if let Some((set, resolve, read)) = queries {
            let n = 2 * timed.len() as u32;
            enc.resolve_query_set(set, 0..n, resolve, 0);
            enc.copy_buffer_to_buffer(resolve, 0, read, 0, Some(u64::from(n) * 8));
        }
        let start = Instant::now();
        self.queue.submit([enc.finish()]);
        self.encode_nanos.fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        self.submits.fetch_add(1, Ordering::Relaxed);
        if let Some((_, _, read)) = queries {
            // Profiling waits for each submission to read its timestamps.
            let bytes = 16 * timed.len() as u64;
            read.map_async(wgpu::MapMode::Read, ..bytes, |r| r.expect("mapping the profiler's timestamps failed"));
            self.wait();
            let ticks: Vec<u64> = bytemuck::cast_slice(&read.get_mapped_range(..bytes).expect("mapped range")).to_vec();
            read.unmap();
            let period = f64::from(self.queue.get_timestamp_period()) * 1e-9;
            drop(profiler);
            let mut profiler = self.profiler.lock().expect("profiler");
            let p = profiler.as_mut().expect("profiling on");
            for (name, pair) in timed.iter().zip(ticks.chunks_exact(2)) {
                let t = p.times.entry(name).or_insert_with(|| KernelTime { kernel: name, ..Default::default() });
                t.gpu_seconds += pair[1].saturating_sub(pair[0]) as f64 * period;
            }
        }
    }

    /// Waits for all submitted work.
    pub fn sync(&self) {
        self.flush();
        self.wait();
    }

    /// Blocks until the device has finished what was submitted, counting the time.
    fn wait(&self) {
        let start = Instant::now();
        self.device.poll(wgpu::PollType::wait_indefinitely()).expect("device lost while waiting");
        self.wait_nanos.fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }

    /// Whether kernels may use f16 (the adapter has `SHADER_F16`; requested when it does).
    pub fn has_f16(&self) -> bool {
        self.device.features().contains(wgpu::Features::SHADER_F16)
    }

    /// A new tensor holding `data`.
    pub fn upload(&self, data: &[f32]) -> Tensor {
        self.upload_bytes(bytemuck::cast_slice(data), data.len())
    }

    /// A new tensor holding `data` rounded to f16 (round to nearest even).
    pub fn upload_f16(&self, data: &[f32]) -> Tensor {
        assert!(self.has_f16(), "{}: no SHADER_F16, so no f16 tensors", self.info.name);
        let mut half: Vec<half::f16> = data.iter().map(|&x| half::f16::from_f32(x)).collect();
        // Buffers hold whole 32-bit words.
        if half.len() % 2 == 1 {
            half.push(half::f16::ZERO);
        }
        let t = self.upload_bytes(bytemuck::cast_slice(&half), data.len().div_ceil(2));
        let len = data.len();
        Tensor::new_f16(t.into_buffer(), len, self.pool.clone())
    }

    /// A new tensor of u32 (token ids, positions, offsets).
    pub fn upload_u32(&self, data: &[u32]) -> Tensor {
        self.upload_bytes(bytemuck::cast_slice(data), data.len())
    }

    /// Small uploads are staged in the upload ring and copied into a pooled buffer in order with
    /// the recorded work (a pooled buffer may still be read by recorded work, which the copy
    /// follows); larger ones fill a buffer of their own.
    fn upload_bytes(&self, bytes: &[u8], len: usize) -> Tensor {
        let size = (bytes.len() as u64).div_ceil(4) * 4;
        if size > UPLOAD_RING / 4 {
            let class = size_class(size);
            let buffer = self.device.create_buffer(&wgpu::BufferDescriptor { label: None, size: class, usage: Self::TENSOR_USAGE, mapped_at_creation: true });
            self.pool.created(class);
            buffer.get_mapped_range_mut(..bytes.len() as u64).expect("mapped at creation").copy_from_slice(bytes);
            buffer.unmap();
            return Tensor::new(buffer, len, self.pool.clone());
        }
        let t = self.alloc(len);
        if size == 0 {
            return t;
        }
        let mut rec = self.recording.lock().expect("encoder");
        if rec.uploads.len() as u64 + size > UPLOAD_RING {
            self.submit(&mut rec);
        }
        let at = rec.uploads.len() as u64;
        rec.uploads.extend_from_slice(bytes);
        rec.uploads.resize((at + size) as usize, 0);
        rec.pass = None;
        self.encoder(&mut rec).copy_buffer_to_buffer(&self.upload_ring, at, t.buffer(), 0, Some(size));
        t
    }

    const TENSOR_USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE.union(wgpu::BufferUsages::COPY_SRC).union(wgpu::BufferUsages::COPY_DST);

    /// A tensor of `len` f32 (or u32) whose contents are unspecified: every op writes its whole
    /// output. Buffers come from the pool (by size class).
    pub fn alloc(&self, len: usize) -> Tensor {
        let bytes = size_class((len.max(1) * 4) as u64);
        // Tensors past the binding limit are bound in windows by the ops that meet them.
        assert!(bytes <= self.limits.max_buffer_size, "a tensor of {len} elements ({bytes} bytes) exceeds the adapter's {} byte buffers", self.limits.max_buffer_size);
        let buffer = self.pool.take(bytes).unwrap_or_else(|| {
            self.pool.created(bytes);
            self.device.create_buffer(&wgpu::BufferDescriptor { label: None, size: bytes, usage: Self::TENSOR_USAGE, mapped_at_creation: false })
        });
        Tensor::new(buffer, len, self.pool.clone())
    }

    /// A zeroed tensor.
    pub fn zeros(&self, len: usize) -> Tensor {
        let t = self.alloc(len);
        self.zero(&t);
        t
    }

    /// Reads a tensor back (submits and waits).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read(&self, t: &Tensor) -> Vec<f32> {
        crate::block_on(self.read_async(t))
    }

    /// Reads a tensor back: submits, and resolves once the device has written it.
    pub async fn read_async(&self, t: &Tensor) -> Vec<f32> {
        bytemuck::cast_slice(&self.read_bytes(t).await).to_vec()
    }

    /// Reads a tensor of u32 back.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_u32(&self, t: &Tensor) -> Vec<u32> {
        crate::block_on(self.read_u32_async(t))
    }

    /// Reads a tensor of u32 back, asynchronously.
    pub async fn read_u32_async(&self, t: &Tensor) -> Vec<u32> {
        bytemuck::cast_slice(&self.read_bytes(t).await).to_vec()
    }

    async fn read_bytes(&self, t: &Tensor) -> Vec<u8> {
        let size = (t.len() * 4) as u64;
        if size == 0 {
            return Vec::new();
        }
        let class = size_class(size);
        let pooled = self.staging.lock().expect("staging pool").get_mut(&class).and_then(Vec::pop);
        let staging = pooled.unwrap_or_else(|| {
            self.pool.created.fetch_add(1, Ordering::Relaxed);
            self.device.create_buffer(&wgpu::BufferDescriptor { label: Some("readback"), size: class, usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST, mapped_at_creation: false })
        });
        self.with_encoder(|enc| enc.copy_buffer_to_buffer(t.buffer(), t.offset(), &staging, 0, Some(size)));
        self.flush();
        let (mapped, done) = futures_channel::oneshot::channel();
        staging.map_async(wgpu::MapMode::Read, ..size, move |r| {
            let _ = mapped.send(r);
        });
        // Natively the poll runs the callback; a browser maps on its own (the poll is a no-op).
        self.wait();
        done.await.expect("the device dropped a read-back").expect("mapping a readback buffer failed");
        let bytes = staging.get_mapped_range(..size).expect("mapped range").to_vec();
        staging.unmap();
        self.staging.lock().expect("staging pool").entry(class).or_default().push(staging);
        bytes
    }
}

/// Tuned tiles by adapter key, as the cache file holds them.
type TunedTiles = HashMap<String, Vec<(crate::tile::MatmulShape, crate::tile::MatmulTile)>>;

fn read_autotune_cache(path: &std::path::Path) -> TunedTiles {
    let Ok(bytes) = std::fs::read(path) else { return HashMap::new() };
    match serde_json::from_slice::<Vec<(String, Vec<(crate::tile::MatmulShape, crate::tile::MatmulTile)>)>>(&bytes) {
        Ok(entries) => entries.into_iter().collect(),
        Err(e) => {
            eprintln!("rstar2-gpu: ignoring the autotune cache {}: {e}", path.display());
            HashMap::new()
        }
    }
}

fn default_autotune_cache() -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("RSTAR2_GPU_AUTOTUNE_CACHE") {
        return Some(p.into());
    }
    let base = std::env::var_os("XDG_CACHE_HOME").map(std::path::PathBuf::from).or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cache")))?;
    Some(base.join("rstar2").join("gpu-autotune.json"))
}

#[cfg(test)]
mod tests {
    use super::{Slot, slots};

    #[test]
    fn binding_slots_are_read_from_the_source() {
        let src = "@group(0) @binding(0) var<storage, read_write> out: array<f32>;\n@group(0) @binding(2) var<uniform> p: Params;\n@group(0) @binding(1) var<storage, read> x: array<f32>;\n";
        assert_eq!(slots(src), vec![Slot::StorageWrite, Slot::StorageRead, Slot::Uniform]);
        for k in crate::kernels::ALL {
            let s = slots(&k.wgsl(crate::kernels::Variant::default()));
            assert!(!s.is_empty() && s.iter().filter(|x| **x == Slot::Uniform).count() <= 1, "{}: {s:?}", k.name);
        }
    }
}
