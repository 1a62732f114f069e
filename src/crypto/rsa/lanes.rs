//! The 128-bit vector operations of the paired Montgomery kernel ([`super::paired`]): wasm `simd128`
//! instructions when the target has them, otherwise a portable emulation with the same lane semantics, so that
//! native tests run the kernel's exact index arithmetic (with checked indexing: an index error fails the test
//! instead of reading a neighbour).
//!
//! A vector is four u32 lanes or, viewed as 64-bit lanes, two u64 (lane 0 = u32 lanes 0-1, little-endian).
//! Every operation here takes the same time whatever the values: none branches, none indexes memory by a value.

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod imp {
    use core::arch::wasm32::{
        i32x4_mul, i32x4_shuffle, u32x4, u64x2_add, u64x2_extmul_high_u32x4, u64x2_extmul_low_u32x4, u64x2_shr,
        u64x2_splat, v128, v128_and, v128_load, v128_or, v128_store, v128_store64_lane,
    };

    /// Four u32 lanes.
    pub type V = v128;

    /// `x[at..at + 4]`. The caller guarantees `at + 4 <= x.len()` (checked in debug builds and, through the
    /// portable twin of this function, in every native test of the kernel).
    #[inline(always)]
    pub fn load(x: &[u32], at: usize) -> V {
        debug_assert!(at + 4 <= x.len());
        // SAFETY: at + 4 <= x.len() (the caller's contract above): the 16 bytes read are inside `x`;
        // v128_load has no alignment requirement.
        unsafe { v128_load(x.as_ptr().add(at).cast::<v128>()) }
    }

    /// `*x`, read anew at each use: a volatile load, which LLVM may not hoist out of a loop. For the operand of
    /// a widening multiply on the quotient chain: hoisted, its widening moves out of the loop too, and LLVM then
    /// emits an `i64x2.mul` (nine x64 instructions in V8) instead of `i64x2.extmul_low_i32x4_u` (three).
    #[inline(always)]
    pub fn load_fresh(x: &super::Aligned) -> V {
        // SAFETY: `Aligned` is 16 bytes with 16-byte alignment: an aligned, in-bounds 16-byte read.
        unsafe { core::ptr::read_volatile((x as *const super::Aligned).cast::<v128>()) }
    }

    /// Writes lanes 0-3 to `x[at..at + 4]` (`at + 4 <= x.len()`).
    #[inline(always)]
    pub fn store(x: &mut [u32], at: usize, v: V) {
        debug_assert!(at + 4 <= x.len());
        // SAFETY: at + 4 <= x.len(): the 16 bytes written are inside `x`; no alignment requirement.
        unsafe { v128_store(x.as_mut_ptr().add(at).cast::<v128>(), v) }
    }

    /// Writes lanes 0-1 to `x[at..at + 2]` (`at + 2 <= x.len()`).
    #[inline(always)]
    pub fn store2(x: &mut [u32], at: usize, v: V) {
        debug_assert!(at + 2 <= x.len());
        // SAFETY: at + 2 <= x.len(): the 8 bytes written are inside `x`; no alignment requirement.
        unsafe { v128_store64_lane::<0>(v, x.as_mut_ptr().add(at).cast::<u64>()) }
    }

    /// The vector (a, b, c, d).
    #[inline(always)]
    pub fn from_u32(a: u32, b: u32, c: u32, d: u32) -> V {
        u32x4(a, b, c, d)
    }

    /// All zeros.
    #[inline(always)]
    pub fn zero() -> V {
        u64x2_splat(0)
    }

    /// 64-bit lanes: (x0 * y0, x1 * y1) from u32 lanes 0 and 1.
    #[inline(always)]
    pub fn mul_lo(x: V, y: V) -> V {
        u64x2_extmul_low_u32x4(x, y)
    }

    /// 64-bit lanes: (x2 * y2, x3 * y3) from u32 lanes 2 and 3.
    #[inline(always)]
    pub fn mul_hi(x: V, y: V) -> V {
        u64x2_extmul_high_u32x4(x, y)
    }

    /// 64-bit lane-wise sum (wrapping; the kernel's bounds keep it exact).
    #[inline(always)]
    pub fn add64(x: V, y: V) -> V {
        u64x2_add(x, y)
    }

    /// 64-bit lanes shifted right by 28 bits.
    #[inline(always)]
    pub fn shr28(x: V) -> V {
        u64x2_shr(x, 28)
    }

    /// 32-bit lane-wise product, low 32 bits.
    #[inline(always)]
    pub fn mul32(x: V, y: V) -> V {
        i32x4_mul(x, y)
    }

    /// Bitwise and.
    #[inline(always)]
    pub fn and(x: V, y: V) -> V {
        v128_and(x, y)
    }

    /// Bitwise or.
    #[inline(always)]
    pub fn or(x: V, y: V) -> V {
        v128_or(x, y)
    }

    /// (x0, x2, x0, x2): the low halves of the two 64-bit lanes, packed into u32 lanes 0-1 (and repeated).
    #[inline(always)]
    pub fn pack_even(x: V) -> V {
        i32x4_shuffle::<0, 2, 0, 2>(x, x)
    }
}

#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
mod imp {
    /// Four u32 lanes.
    pub type V = [u32; 4];

    #[inline(always)]
    fn lanes64(x: V) -> [u64; 2] {
        [
            u64::from(x[0]) | (u64::from(x[1]) << 32),
            u64::from(x[2]) | (u64::from(x[3]) << 32),
        ]
    }

    #[inline(always)]
    fn from64(x: [u64; 2]) -> V {
        [x[0] as u32, (x[0] >> 32) as u32, x[1] as u32, (x[1] >> 32) as u32]
    }

    /// `x[at..at + 4]` (checked).
    #[inline(always)]
    pub fn load(x: &[u32], at: usize) -> V {
        [x[at], x[at + 1], x[at + 2], x[at + 3]]
    }

    /// `*x`.
    #[inline(always)]
    pub fn load_fresh(x: &super::Aligned) -> V {
        x.0
    }

    /// Writes lanes 0-3 to `x[at..at + 4]` (checked).
    #[inline(always)]
    pub fn store(x: &mut [u32], at: usize, v: V) {
        x[at..at + 4].copy_from_slice(&v);
    }

    /// Writes lanes 0-1 to `x[at..at + 2]` (checked).
    #[inline(always)]
    pub fn store2(x: &mut [u32], at: usize, v: V) {
        x[at] = v[0];
        x[at + 1] = v[1];
    }

    /// The vector (a, b, c, d).
    #[inline(always)]
    pub fn from_u32(a: u32, b: u32, c: u32, d: u32) -> V {
        [a, b, c, d]
    }

    /// All zeros.
    #[inline(always)]
    pub fn zero() -> V {
        [0; 4]
    }

    /// 64-bit lanes: (x0 * y0, x1 * y1).
    #[inline(always)]
    pub fn mul_lo(x: V, y: V) -> V {
        from64([u64::from(x[0]) * u64::from(y[0]), u64::from(x[1]) * u64::from(y[1])])
    }

    /// 64-bit lanes: (x2 * y2, x3 * y3).
    #[inline(always)]
    pub fn mul_hi(x: V, y: V) -> V {
        from64([u64::from(x[2]) * u64::from(y[2]), u64::from(x[3]) * u64::from(y[3])])
    }

    /// 64-bit lane-wise sum. Checked in tests: the kernel's bounds say it never wraps.
    #[inline(always)]
    pub fn add64(x: V, y: V) -> V {
        let (a, b) = (lanes64(x), lanes64(y));
        from64([a[0] + b[0], a[1] + b[1]])
    }

    /// 64-bit lanes shifted right by 28 bits.
    #[inline(always)]
    pub fn shr28(x: V) -> V {
        let a = lanes64(x);
        from64([a[0] >> 28, a[1] >> 28])
    }

    /// 32-bit lane-wise product, low 32 bits.
    #[inline(always)]
    pub fn mul32(x: V, y: V) -> V {
        [
            x[0].wrapping_mul(y[0]),
            x[1].wrapping_mul(y[1]),
            x[2].wrapping_mul(y[2]),
            x[3].wrapping_mul(y[3]),
        ]
    }

    /// Bitwise and.
    #[inline(always)]
    pub fn and(x: V, y: V) -> V {
        [x[0] & y[0], x[1] & y[1], x[2] & y[2], x[3] & y[3]]
    }

    /// Bitwise or.
    #[inline(always)]
    pub fn or(x: V, y: V) -> V {
        [x[0] | y[0], x[1] | y[1], x[2] | y[2], x[3] | y[3]]
    }

    /// (x0, x2, x0, x2).
    #[inline(always)]
    pub fn pack_even(x: V) -> V {
        [x[0], x[2], x[0], x[2]]
    }
}

pub use imp::*;

/// Four u32 lanes in memory, 16-byte aligned (for [`load_fresh`]).
#[repr(C, align(16))]
pub struct Aligned(pub [u32; 4]);
