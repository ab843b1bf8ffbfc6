//! A device buffer of f32 (or u32) elements that goes back to its device's pool when dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A flat tensor on the device. Shapes are the op's business (stated at each op).
pub struct Tensor {
    buffer: Option<wgpu::Buffer>,
    len: usize,
    pool: Arc<Mutex<HashMap<u64, Vec<wgpu::Buffer>>>>,
}

impl Tensor {
    pub(crate) fn new(buffer: wgpu::Buffer, len: usize, pool: Arc<Mutex<HashMap<u64, Vec<wgpu::Buffer>>>>) -> Self {
        Tensor { buffer: Some(buffer), len, pool }
    }

    /// Elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
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
