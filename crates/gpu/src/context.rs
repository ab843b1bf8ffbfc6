//! The device: adapter choice, the adapter's own limits, a pipeline cache keyed by kernel and
//! override constants, a buffer pool, and one command encoder that ops record into until
//! something has to be read back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use wgpu::util::DeviceExt;

use crate::GpuError;
use crate::kernels::Kernel;
use crate::tensor::Tensor;

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
    /// Largest storage binding in bytes.
    pub max_storage_binding: u64,
}

/// The one device every GPU test in a process shares (tests run on threads; a second device
/// would only compete for the same adapter). No adapter is a test failure, as CI requires: set
/// `RSTAR2_ALLOW_NO_GPU=1` to get `None` instead and run the rest of a suite on a machine that
/// cannot run WGSL at all (it says so loudly).
pub fn test_gpu() -> Option<Arc<Gpu>> {
    static GPU: std::sync::OnceLock<Option<Arc<Gpu>>> = std::sync::OnceLock::new();
    GPU.get_or_init(|| match Gpu::open(AdapterChoice::Any) {
        Ok(Some(g)) => {
            eprintln!("GPU tests on {}", g.describe());
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
fn adapters() -> Vec<wgpu::Adapter> {
    let mut all = pollster::block_on(instance().enumerate_adapters(wgpu::Backends::all()));
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

fn is_real_gpu(info: &wgpu::AdapterInfo) -> bool {
    matches!(info.device_type, wgpu::DeviceType::DiscreteGpu | wgpu::DeviceType::IntegratedGpu | wgpu::DeviceType::VirtualGpu)
}

/// Lists the adapters wgpu can see.
pub fn list_adapters() -> Vec<AdapterSummary> {
    adapters()
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

#[derive(Hash, PartialEq, Eq, Clone)]
struct PipelineKey {
    kernel: &'static str,
    f16_weights: bool,
    constants: Vec<(&'static str, u64)>,
}

/// A storage binding: a byte range of a tensor's buffer.
pub(crate) struct View<'t> {
    pub tensor: &'t Tensor,
    pub offset: u64,
    pub size: u64,
}

/// The command encoder being recorded and its open compute pass (which must end before the
/// encoder records anything else).
#[derive(Default)]
struct Recording {
    // Field order: the pass drops before the encoder.
    pass: Option<wgpu::ComputePass<'static>>,
    encoder: Option<wgpu::CommandEncoder>,
}

/// An open device with its queue, caches and the encoder being recorded.
pub struct Gpu {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    /// What was opened.
    pub info: wgpu::AdapterInfo,
    /// The limits requested (the adapter's own).
    pub limits: wgpu::Limits,
    binding_limit: u64,
    pipelines: Mutex<HashMap<PipelineKey, Arc<wgpu::ComputePipeline>>>,
    pub(crate) pool: Arc<Mutex<HashMap<u64, Vec<wgpu::Buffer>>>>,
    recording: Mutex<Recording>,
    dispatches: Mutex<u64>,
}

impl Gpu {
    /// Opens an adapter. `Ok(None)` only for [`AdapterChoice::Auto`] when there is no real GPU.
    pub fn open(choice: AdapterChoice) -> Result<Option<Gpu>, GpuError> {
        let all = adapters();
        let adapter = match choice {
            AdapterChoice::Auto => match all.into_iter().find(|a| is_real_gpu(&a.get_info())) {
                Some(a) => a,
                None => return Ok(None),
            },
            AdapterChoice::Any => all.into_iter().next().ok_or(GpuError::NoAdapter)?,
            AdapterChoice::Index(i) => {
                let n = all.len();
                all.into_iter().nth(i).ok_or(GpuError::NoSuchAdapter { index: i, count: n })?
            }
        };
        Self::from_adapter(adapter).map(Some)
    }

    fn from_adapter(adapter: wgpu::Adapter) -> Result<Gpu, GpuError> {
        let info = adapter.get_info();
        // wgpu's defaults cap buffers at 256 MiB and workgroups at 256 invocations; real models
        // need what the adapter offers.
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("rstar2"),
            required_features: adapter.features() & wgpu::Features::SHADER_F16,
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| GpuError::Device { adapter: info.name.clone(), message: e.to_string() })?;
        Ok(Gpu {
            device,
            queue,
            info,
            binding_limit: limits.max_storage_buffer_binding_size,
            limits,
            pipelines: Mutex::new(HashMap::new()),
            pool: Arc::new(Mutex::new(HashMap::new())),
            recording: Mutex::new(Recording::default()),
            dispatches: Mutex::new(0),
        })
    }

    /// "name (backend, type)".
    pub fn describe(&self) -> String {
        format!("{} ({:?}, {:?})", self.info.name, self.info.backend, self.info.device_type)
    }

    /// Whether this adapter is a software rasterizer (lavapipe, llvmpipe, WARP).
    pub fn is_software(&self) -> bool {
        !is_real_gpu(&self.info)
    }

    /// Dispatches recorded since the device was opened.
    pub fn dispatch_count(&self) -> u64 {
        *self.dispatches.lock().expect("dispatch counter")
    }

    fn pipeline(&self, kernel: &Kernel, f16_weights: bool, constants: &[(&'static str, f64)]) -> Arc<wgpu::ComputePipeline> {
        let key = PipelineKey { kernel: kernel.name, f16_weights, constants: constants.iter().map(|&(n, v)| (n, v.to_bits())).collect() };
        let mut cache = self.pipelines.lock().expect("pipeline cache");
        if let Some(p) = cache.get(&key) {
            return p.clone();
        }
        let module = self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(kernel.name),
            source: wgpu::ShaderSource::Wgsl(if f16_weights { kernel.f16_weights_source().into() } else { kernel.source.into() }),
        });
        let pipeline = Arc::new(self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(kernel.name),
            layout: None,
            module: &module,
            entry_point: Some("main"),
            compilation_options: wgpu::PipelineCompilationOptions { constants, zero_initialize_workgroup_memory: false },
            cache: None,
        }));
        cache.insert(key, pipeline.clone());
        pipeline
    }

    /// Runs `f` on the encoder, with no compute pass open (copies and clears).
    fn with_encoder<R>(&self, f: impl FnOnce(&mut wgpu::CommandEncoder) -> R) -> R {
        let mut rec = self.recording.lock().expect("encoder");
        rec.pass = None;
        let enc = rec.encoder.get_or_insert_with(|| self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("rstar2 ops") }));
        f(enc)
    }

    /// Runs `f` in the open compute pass, opening one if needed: consecutive dispatches share a
    /// pass (wgpu orders them by their buffer usage), which saves a pass per dispatch.
    fn with_pass<R>(&self, f: impl FnOnce(&mut wgpu::ComputePass<'static>) -> R) -> R {
        let mut rec = self.recording.lock().expect("encoder");
        let rec = &mut *rec;
        if rec.pass.is_none() {
            let enc = rec.encoder.get_or_insert_with(|| self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("rstar2 ops") }));
            rec.pass = Some(enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("rstar2 ops"), timestamp_writes: None }).forget_lifetime());
        }
        f(rec.pass.as_mut().expect("opened above"))
    }

    /// Records one dispatch of `kernel` with whole tensors bound in binding order (0, 1, ...),
    /// then the uniform `params` (as u32 words; f32 through `to_bits`) at the next binding.
    pub(crate) fn dispatch(&self, kernel: &Kernel, constants: &[(&'static str, f64)], storage: &[&Tensor], params: &[u32], groups: [u32; 3]) {
        let views: Vec<View<'_>> = storage
            .iter()
            .map(|t| {
                let bytes = t.buffer().size();
                assert!(
                    bytes <= self.binding_limit,
                    "{}: a tensor of {} elements ({bytes} bytes) is over the adapter's {} byte storage binding and this op binds it whole",
                    kernel.name,
                    t.len(),
                    self.binding_limit
                );
                View { tensor: t, offset: 0, size: bytes }
            })
            .collect();
        self.dispatch_views(kernel, constants, &views, params, groups);
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
        let offset = (start as u64 * elem) / align * align;
        let shift = start - (offset / elem) as usize;
        // Whole 32-bit words.
        let size = ((shift + len.max(1)) as u64 * elem).div_ceil(4) * 4;
        (View { tensor: t, offset, size: size.min(t.buffer().size() - offset) }, shift)
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
        let max = self.limits.max_compute_workgroups_per_dimension;
        assert!(groups.iter().all(|&g| g <= max), "{}: {groups:?} workgroups exceed the adapter's {max} per dimension", kernel.name);
        let pipeline = self.pipeline(kernel, f16_weights, constants);
        let mut words = params.to_vec();
        words.resize(params.len().div_ceil(4).max(1) * 4, 0);
        let uniform = self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(kernel.name),
            contents: bytemuck::cast_slice(&words),
            usage: wgpu::BufferUsages::UNIFORM,
        });
        let mut entries: Vec<wgpu::BindGroupEntry> = storage
            .iter()
            .enumerate()
            .map(|(i, v)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding { buffer: v.tensor.buffer(), offset: v.offset, size: std::num::NonZeroU64::new(v.size) }),
            })
            .collect();
        entries.push(wgpu::BindGroupEntry { binding: storage.len() as u32, resource: uniform.as_entire_binding() });
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(kernel.name),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        self.with_pass(|pass| {
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        });
        *self.dispatches.lock().expect("dispatch counter") += 1;
    }

    /// Zeroes a tensor (recorded in order with the dispatches).
    pub fn zero(&self, t: &Tensor) {
        self.with_encoder(|enc| enc.clear_buffer(t.buffer(), 0, None));
    }

    /// Copies `len` elements of `src` from `src_offset` to `dst` at `dst_offset` (recorded in
    /// order with the dispatches).
    pub fn copy_range(&self, src: &Tensor, src_offset: usize, dst: &Tensor, dst_offset: usize, len: usize) {
        assert!(src_offset + len <= src.len() && dst_offset + len <= dst.len(), "copy: {len} elements {src_offset}->{dst_offset} between {} and {}", src.len(), dst.len());
        self.with_encoder(|enc| enc.copy_buffer_to_buffer(src.buffer(), (src_offset * 4) as u64, dst.buffer(), (dst_offset * 4) as u64, Some((len * 4) as u64)));
    }

    /// Submits what has been recorded.
    pub fn flush(&self) {
        let mut rec = self.recording.lock().expect("encoder");
        rec.pass = None;
        if let Some(enc) = rec.encoder.take() {
            self.queue.submit([enc.finish()]);
        }
    }

    /// Waits for all submitted work.
    pub fn sync(&self) {
        self.flush();
        self.device.poll(wgpu::PollType::wait_indefinitely()).expect("device lost while waiting");
    }

    /// A new tensor holding `data` (a fresh buffer: never a pooled one that queued work may
    /// still read).
    pub fn upload(&self, data: &[f32]) -> Tensor {
        self.upload_bytes(bytemuck::cast_slice(data), data.len())
    }

    /// Whether kernels may use f16 (the adapter has `SHADER_F16`; requested when it does).
    pub fn has_f16(&self) -> bool {
        self.device.features().contains(wgpu::Features::SHADER_F16)
    }

    /// A new tensor holding `data` rounded to f16 (round to nearest even).
    pub fn upload_f16(&self, data: &[f32]) -> Tensor {
        assert!(self.has_f16(), "{}: no SHADER_F16, so no f16 tensors", self.info.name);
        let mut half: Vec<half::f16> = data.iter().map(|&x| half::f16::from_f32(x)).collect();
        // Buffers hold whole 32-bit words.
        if half.len() % 2 == 1 {
            half.push(half::f16::ZERO);
        }
        let t = self.upload_bytes(bytemuck::cast_slice(&half), data.len());
        let len = t.len();
        Tensor::new_f16(t.into_buffer(), len, self.pool.clone())
    }

    /// A new tensor of u32 (token ids, positions, offsets).
    pub fn upload_u32(&self, data: &[u32]) -> Tensor {
        self.upload_bytes(bytemuck::cast_slice(data), data.len())
    }

    fn upload_bytes(&self, bytes: &[u8], len: usize) -> Tensor {
        let padded;
        let contents = if bytes.is_empty() {
            padded = [0u8; 4];
            &padded[..]
        } else {
            bytes
        };
        let buffer = self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
        });
        Tensor::new(buffer, len, self.pool.clone())
    }

    /// A tensor of `len` f32 (or u32) whose contents are unspecified: every op writes its whole
    /// output. Buffers come from the pool.
    pub fn alloc(&self, len: usize) -> Tensor {
        let bytes = (len.max(1) * 4) as u64;
        // Tensors past the binding limit are bound in windows by the ops that meet them.
        assert!(bytes <= self.limits.max_buffer_size, "a tensor of {len} elements ({bytes} bytes) exceeds the adapter's {} byte buffers", self.limits.max_buffer_size);
        let reused = self.pool.lock().expect("buffer pool").get_mut(&bytes).and_then(Vec::pop);
        let buffer = reused.unwrap_or_else(|| {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size: bytes,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
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
    pub fn read(&self, t: &Tensor) -> Vec<f32> {
        bytemuck::cast_slice(&self.read_bytes(t)).to_vec()
    }

    /// Reads a tensor of u32 back.
    pub fn read_u32(&self, t: &Tensor) -> Vec<u32> {
        bytemuck::cast_slice(&self.read_bytes(t)).to_vec()
    }

    fn read_bytes(&self, t: &Tensor) -> Vec<u8> {
        let size = (t.len() * 4) as u64;
        if size == 0 {
            return Vec::new();
        }
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.with_encoder(|enc| enc.copy_buffer_to_buffer(t.buffer(), 0, &staging, 0, Some(size)));
        self.flush();
        staging.map_async(wgpu::MapMode::Read, .., |r| r.expect("mapping a readback buffer failed"));
        self.device.poll(wgpu::PollType::wait_indefinitely()).expect("device lost while reading back");
        let bytes = staging.get_mapped_range(..).expect("mapped range").to_vec();
        staging.unmap();
        bytes
    }
}
