//! A device buffer of f32, u32 or f16 elements that goes back to its device's pool when dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A flat tensor on the device. Shapes are the op's business (stated at each op).
pub struct Tensor {
    buffer: Option<wgpu::Buffer>,
    len: usize,
    f16: bool,
    pool: Arc<Mutex<HashMap<u64, Vec<wgpu::Buffer>>>>,
}

impl Tensor {
    pub(crate) fn new(buffer: wgpu::Buffer, len: usize, pool: Arc<Mutex<HashMap<u64, Vec<wgpu::Buffer>>>>) -> Self {
        Tensor { buffer: Some(buffer), len, f16: false, pool }
    }

    pub(crate) fn new_f16(buffer: wgpu::Buffer, len: usize, pool: Arc<Mutex<HashMap<u64, Vec<wgpu::Buffer>>>>) -> Self {
        Tensor { buffer: Some(buffer), len, f16: true, pool }
    }

    /// Whether its elements are f16 (else 32-bit).
    pub fn is_f16(&self) -> bool {
        self.f16
    }

    /// Elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Takes the buffer out (it will not go back to the pool).
    pub(crate) fn into_buffer(mut self) -> wgpu::Buffer {
        self.buffer.take().expect("buffer present until drop")
    }

    pub(crate) fn buffer(&self) -> &wgpu::Buffer {
        self.buffer.as_ref().expect("buffer present until drop")
    }
}

impl Drop for Tensor {
    fn drop(&mut self) {
        // Work already recorded keeps its own reference; reuse is ordered after it on the queue.
        if let (Some(b), Ok(mut pool)) = (self.buffer.take(), self.pool.lock()) {
            pool.entry(b.size()).or_default().push(b);
        }
    }
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor[{}]", self.len)
    }
}
