//! A device buffer of f32, u32 or f16 elements that goes back to its device's pool when dropped,
//! and the pool: buffers by size class, kept for reuse until a phase ends.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Buffer sizes are rounded up to a class (four per power of two, at least 256 bytes), so
/// tensors of nearby sizes share pooled buffers; at most a quarter is wasted.
pub(crate) fn size_class(bytes: u64) -> u64 {
    let bytes = bytes.max(256);
    let top = 63 - bytes.leading_zeros(); // 2^top <= bytes < 2^(top+1)
    let quarter = 1u64 << (top - 2);
    bytes.div_ceil(quarter) * quarter
}

/// Free device buffers by size, and what the device holds.
///
/// A request takes the free buffer of its class that sorts first (buffers order by identity),
/// not the one freed last: a step that allocates and frees the same sizes in the same order as
/// the previous one then gets the same buffers whatever order its tensors were dropped in, so
/// the bind groups cached for them still apply.
#[derive(Default)]
pub(crate) struct Pool {
    free: Mutex<HashMap<u64, BTreeSet<wgpu::Buffer>>>,
    /// Bytes of every buffer the device holds for tensors (in use or pooled).
    pub(crate) live_bytes: AtomicU64,
    /// The most `live_bytes` ever was.
    pub(crate) peak_bytes: AtomicU64,
    /// Buffers created since the device was opened.
    pub(crate) created: AtomicU64,
}

impl Pool {
    /// A free buffer of exactly `bytes` (a size class), if one is pooled.
    pub(crate) fn take(&self, bytes: u64) -> Option<wgpu::Buffer> {
        self.free.lock().expect("buffer pool").get_mut(&bytes).and_then(BTreeSet::pop_first)
    }

    /// Counts a newly created buffer.
    pub(crate) fn created(&self, bytes: u64) {
        self.created.fetch_add(1, Ordering::Relaxed);
        let live = self.live_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak_bytes.fetch_max(live, Ordering::Relaxed);
    }

    fn give_back(&self, buffer: wgpu::Buffer) {
        if let Ok(mut free) = self.free.lock() {
            free.entry(buffer.size()).or_default().insert(buffer);
        }
    }

    /// Drops every pooled buffer (the device frees them once no queued work uses them); returns
    /// the bytes released.
    pub(crate) fn trim(&self) -> u64 {
        let mut free = self.free.lock().expect("buffer pool");
        let bytes: u64 = free.values().flatten().map(wgpu::Buffer::size).sum();
        free.clear();
        self.live_bytes.fetch_sub(bytes, Ordering::Relaxed);
        bytes
    }

    /// Bytes of pooled (free) buffers.
    pub(crate) fn pooled_bytes(&self) -> u64 {
        self.free.lock().expect("buffer pool").values().flatten().map(wgpu::Buffer::size).sum()
    }
}

/// A flat tensor on the device: a buffer of its own (back to the pool when dropped), or a view
/// of part of another tensor's buffer. Shapes are the op's business (stated at each op).
pub struct Tensor {
    buffer: Option<wgpu::Buffer>,
    /// Byte offset in the buffer (a multiple of the storage-binding alignment).
    offset: u64,
    len: usize,
    f16: bool,
    /// None for views: the buffer belongs to the tensor they view.
    pool: Option<Arc<Pool>>,
}

impl Tensor {
    pub(crate) fn new(buffer: wgpu::Buffer, len: usize, pool: Arc<Pool>) -> Self {
        Tensor { buffer: Some(buffer), offset: 0, len, f16: false, pool: Some(pool) }
    }

    pub(crate) fn new_f16(buffer: wgpu::Buffer, len: usize, pool: Arc<Pool>) -> Self {
        Tensor { buffer: Some(buffer), offset: 0, len, f16: true, pool: Some(pool) }
    }

    /// Elements `start .. start + len` as a tensor of their own, of the same element type;
    /// `start` must sit on the device's storage-binding alignment. The viewed tensor must
    /// outlive the view (its buffer goes back to the pool when it is dropped).
    pub(crate) fn view(&self, start: usize, len: usize) -> Tensor {
        assert!(start + len <= self.len, "view {start}+{len} of a tensor of {}", self.len);
        let elem = if self.f16 { 2 } else { 4 };
        Tensor { buffer: self.buffer.clone(), offset: self.offset + start as u64 * elem, len, f16: self.f16, pool: None }
    }

    /// Byte offset of its first element in its buffer.
    pub(crate) fn offset(&self) -> u64 {
        self.offset
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

    /// Bytes its elements take, in whole 32-bit words (its buffer may be larger: a size class).
    pub fn bytes(&self) -> u64 {
        let elem = if self.f16 { 2 } else { 4 };
        (self.len.max(1) as u64 * elem).div_ceil(4) * 4
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
        if let (Some(b), Some(pool)) = (self.buffer.take(), &self.pool) {
            pool.give_back(b);
        }
    }
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor[{}]", self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::size_class;

    #[test]
    fn size_classes_round_up_by_at_most_a_quarter() {
        assert_eq!(size_class(1), 256);
        assert_eq!(size_class(256), 256);
        assert_eq!(size_class(257), 320);
        assert_eq!(size_class(1000), 1024);
        assert_eq!(size_class(1025), 1280);
        for bytes in [300u64, 4095, 4097, 1 << 20, (1 << 20) + 1, 123_456_789] {
            let c = size_class(bytes);
            assert!(c >= bytes && (c - bytes) * 4 <= bytes, "{bytes} -> {c}");
            assert_eq!(size_class(c), c, "a class is its own class");
        }
    }
}
