//! Buffers that start on a cache-line boundary, for the operands the decode kernels stream.
//!
//! A `Vec` of 2- or 4-byte values is only as aligned as the allocator makes it: glibc hands out
//! large blocks 16 bytes past a page boundary. Then every 64-byte row of an AMX tile and every
//! 64-byte AVX-512 load straddles two cache lines, and a tile load touches 32 lines instead of
//! 16.
//!
//! ```
//! use rstar2_model::aligned::AlignedVec;
//! let v = AlignedVec::<u16>::from_fn(100, |i| i as u16);
//! assert_eq!(v.as_ptr() as usize % 64, 0);
//! assert_eq!(v[99], 99);
//! ```

use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};

use bytemuck::{Pod, Zeroable};
use rayon::prelude::*;

/// One cache line of storage.
#[derive(Clone, Copy, Zeroable, Pod)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// `len` values of `T` in whole cache lines, the first at a 64-byte boundary.
#[derive(Clone)]
pub struct AlignedVec<T> {
    lines: Vec<Line>,
    len: usize,
    _values: PhantomData<T>,
}

impl<T: Pod> AlignedVec<T> {
    /// `len` values with all bits zero.
    pub fn zeroed(len: usize) -> Self {
        let lines = (len * size_of::<T>()).div_ceil(size_of::<Line>());
        AlignedVec { lines: vec![Line([0; 64]); lines], len, _values: PhantomData }
    }

    /// Value `i` is `value(i)`, filled in parallel.
    pub fn from_fn(len: usize, value: impl Fn(usize) -> T + Sync) -> Self
    where
        T: Send,
    {
        let mut v = Self::zeroed(len);
        (*v).par_iter_mut().enumerate().for_each(|(i, x)| *x = value(i));
        v
    }
}

impl<T: Pod> Deref for AlignedVec<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &bytemuck::cast_slice(&self.lines)[..self.len]
    }
}

impl<T: Pod> DerefMut for AlignedVec<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut bytemuck::cast_slice_mut(&mut self.lines)[..self.len]
    }
}

impl<T: Pod + PartialEq> PartialEq for AlignedVec<T> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl<T: Pod + std::fmt::Debug> std::fmt::Debug for AlignedVec<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedVec(len {})", self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_exact_length() {
        for len in [0, 1, 31, 32, 33, 1 << 20] {
            let v = AlignedVec::<f32>::from_fn(len, |i| i as f32);
            assert_eq!(v.len(), len);
            assert_eq!(v.as_ptr() as usize % 64, 0);
            assert!(v.iter().enumerate().all(|(i, &x)| x == i as f32));
        }
        let mut z = AlignedVec::<u16>::zeroed(5);
        z[4] = 7;
        assert_eq!(&*z, &[0, 0, 0, 0, 7]);
    }
}
