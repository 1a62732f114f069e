//! Constant-time Montgomery arithmetic for RSA-CRT signing, in radix 2^28 with lazy carries.
//!
//! Why hand-written: the maintained constant-time bignum crate (crypto-bigint, behind `rsa` 0.10) uses 64-bit
//! limbs whose 64x64->128-bit products wasm32 has to emulate, and allocates per operation; an RS256 signature
//! then costs about 8 ms inside Envoy's V8. Here limbs hold 28 bits in a `u64`, so every limb product is one
//! native `i64.mul` and a whole column of products (Finely Integrated Product Scanning, Koc et al. 1996) sums
//! without carry handling; with wasm `simd128` LLVM vectorises those column sums. No crate offers this.
//!
//! Constant time: every loop bound and index depends only on the (public) limb count, never on a value; the
//! exponentiation reads its window table with a masked scan of all entries; there is no data-dependent branch.
//! Bounds: with R = 2^(28*N) > 4m, `mul` keeps values below 2m whenever a*b < R*m (e.g. a, b < 2m), so no
//! conditional subtraction is needed until the final [`Modulus::reduce`].

/// Bits per limb.
pub const LIMB_BITS: u32 = 28;
const MASK: u64 = (1 << LIMB_BITS) - 1;

/// A number as N little-endian limbs of 28 bits (each limb < 2^28). Limbs are `u32` so that each product is
/// a 32x32->64 multiplication, which wasm SIMD does two at a time (`i64x2.extmul_*_i32x4_u`).
pub type Limbs<const N: usize> = [u32; N];

#[inline(always)]
fn wide_mul(a: u32, b: u32) -> u64 {
    u64::from(a) * u64::from(b)
}

/// An odd modulus m < R/4 with its Montgomery constants.
pub struct Modulus<const N: usize> {
    m: Limbs<N>,
    /// The limbs in reverse order, for the column sums.
    m_rev: Limbs<N>,
    /// -m^-1 mod 2^28.
    m_prime: u64,
}

impl<const N: usize> Modulus<N> {
    /// `m` must be odd and below 2^(28*N - 2); the caller checks (see `rsa_crt`).
    pub fn new(m: Limbs<N>) -> Modulus<N> {
        Modulus {
            m_rev: reversed(&m),
            m_prime: u64::from(neg_inverse(m[0])),
            m,
        }
    }

    /// The modulus.
    pub fn limbs(&self) -> &Limbs<N> {
        &self.m
    }

    /// a * b * R^-1 mod m, below 2m when a*b < R*m.
    #[inline(always)]
    pub fn mul(&self, a: &Limbs<N>, b: &Limbs<N>) -> Limbs<N> {
        let m = &self.m;
        let b_rev = reversed(b);
        let mut u = [0u32; N];
        let mut out = [0u32; N];
        let mut acc: u64 = 0;
        // Column k sums a[i] b[k-i] + u[i] m[k-i]; with b and m reversed both factors are contiguous runs.
        for k in 0..N {
            let run = N - 1 - k..N - 1;
            acc += dot2(&a[..k], &b_rev[run.clone()], &u[..k], &self.m_rev[run]);
            acc += wide_mul(a[k], b[0]);
            let uk = (((acc & MASK) * self.m_prime) & MASK) as u32;
            u[k] = uk;
            acc += wide_mul(uk, m[0]);
            acc >>= LIMB_BITS;
        }
        for k in N..2 * N - 1 {
            let low = k + 1 - N;
            let run = 0..2 * N - 1 - k;
            acc += dot2(&a[low..], &b_rev[run.clone()], &u[low..], &self.m_rev[run]);
            out[k - N] = (acc & MASK) as u32;
            acc >>= LIMB_BITS;
        }
        out[N - 1] = acc as u32;
        out
    }

    /// a * a * R^-1 mod m: the cross products once, doubled.
    #[inline(always)]
    pub fn square(&self, a: &Limbs<N>) -> Limbs<N> {
        let m = &self.m;
        let a_rev = reversed(a);
        let mut u = [0u32; N];
        let mut out = [0u32; N];
        let mut acc: u64 = 0;
        for k in 0..N {
            let half = k.div_ceil(2);
            let cross = dot(&a[..half], &a_rev[N - 1 - k..N - 1 - k + half]);
            acc += cross << 1;
            if k % 2 == 0 {
                acc += wide_mul(a[k / 2], a[k / 2]);
            }
            acc += dot(&u[..k], &self.m_rev[N - 1 - k..N - 1]);
            let uk = (((acc & MASK) * self.m_prime) & MASK) as u32;
            u[k] = uk;
            acc += wide_mul(uk, m[0]);
            acc >>= LIMB_BITS;
        }
        for k in N..2 * N - 1 {
            let low = k + 1 - N;
            let half = k.div_ceil(2);
            let cross = dot(&a[low..half], &a_rev[0..half - low]);
            acc += cross << 1;
            if k % 2 == 0 {
                acc += wide_mul(a[k / 2], a[k / 2]);
            }
            acc += dot(&u[low..], &self.m_rev[0..2 * N - 1 - k]);
            out[k - N] = (acc & MASK) as u32;
            acc >>= LIMB_BITS;
        }
        out[N - 1] = acc as u32;
        out
    }

    /// x mod m for x < 2m, in constant time.
    pub fn reduce(&self, x: &Limbs<N>) -> Limbs<N> {
        let (diff, borrow) = sub(x, &self.m);
        select(borrow, x, &diff)
    }

    /// base^exp for a PUBLIC exponent (e.g. RSA's e = 65537), by left-to-right square-and-multiply: its time
    /// depends on the exponent's bits, which is why it must never see a secret one. `exp_bits` >= 1.
    pub fn pow_public(&self, base: &Limbs<N>, exp: &[u8], exp_bits: usize) -> Limbs<N> {
        let mut acc = *base;
        for bit in (0..exp_bits.saturating_sub(1)).rev() {
            acc = self.square(&acc);
            let byte = exp.get(exp.len().wrapping_sub(1 + bit / 8)).copied().unwrap_or(0);
            if (byte >> (bit % 8)) & 1 == 1 {
                acc = self.mul(&acc, base);
            }
        }
        acc
    }

    /// base^exp (Montgomery form in, Montgomery form out) with a fixed 5-bit window. `exp` is big-endian and
    /// `exp_bits` (public) bits long; `one` is R mod m.
    pub fn pow(&self, base: &Limbs<N>, exp: &[u8], exp_bits: usize, one: &Limbs<N>) -> Limbs<N> {
        const WINDOW: usize = 5;
        let mut table = [[0u32; N]; 1 << WINDOW];
        table[0] = *one;
        table[1] = *base;
        for i in 2..table.len() {
            table[i] = self.mul(&table[i - 1], base);
        }
        let mut acc = *one;
        for w in (0..exp_bits.div_ceil(WINDOW)).rev() {
            for _ in 0..WINDOW {
                acc = self.square(&acc);
            }
            let mut index: u32 = 0;
            for j in 0..WINDOW {
                let bit = w * WINDOW + j;
                if bit < exp_bits {
                    let byte = exp.get(exp.len().wrapping_sub(1 + bit / 8)).copied().unwrap_or(0);
                    index |= u32::from((byte >> (bit % 8)) & 1) << j;
                }
            }
            let mut chosen = [0u32; N];
            for (j, entry) in table.iter().enumerate() {
                // All-ones when j == index, computed without a branch.
                let mask = 0u32.wrapping_sub(((j as u32) ^ index).wrapping_sub(1) >> 31);
                for (c, e) in chosen.iter_mut().zip(entry) {
                    *c |= e & mask;
                }
            }
            acc = self.mul(&acc, &chosen);
        }
        acc
    }
}

/// -m0^-1 mod 2^28 for an odd m0.
pub(super) fn neg_inverse(m0: u32) -> u32 {
    // Newton iteration for m0^-1 mod 2^64 (each step doubles the correct bits: 1 -> 2 -> ... -> 64).
    let m0 = u64::from(m0);
    let mut inv: u64 = 1;
    for _ in 0..6 {
        inv = inv.wrapping_mul(2u64.wrapping_sub(m0.wrapping_mul(inv)));
    }
    (0u64.wrapping_sub(inv) & MASK) as u32
}

fn reversed<const N: usize>(x: &Limbs<N>) -> Limbs<N> {
    let mut out = *x;
    out.reverse();
    out
}

/// Sum of a[i] * b[i] over equal-length runs (at most 2^8 products of 28-bit limbs: no overflow).
#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
#[inline(always)]
fn dot(a: &[u32], b: &[u32]) -> u64 {
    a.iter().zip(b).map(|(&x, &y)| wide_mul(x, y)).sum()
}

/// dot(a, b) + dot(c, d) for four runs of one length.
#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
#[inline(always)]
fn dot2(a: &[u32], b: &[u32], c: &[u32], d: &[u32]) -> u64 {
    dot(a, b) + dot(c, d)
}

/// dot(a, b) + dot(c, d) for four runs of one length, in one SIMD loop.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
#[inline(always)]
fn dot2(a: &[u32], b: &[u32], c: &[u32], d: &[u32]) -> u64 {
    use core::arch::wasm32::{
        u64x2_add, u64x2_extmul_high_u32x4, u64x2_extmul_low_u32x4, u64x2_extract_lane, u64x2_splat, v128, v128_load,
    };
    let len = a.len().min(b.len()).min(c.len()).min(d.len());
    let mut lanes = u64x2_splat(0);
    let mut i = 0;
    while i + 4 <= len {
        // SAFETY: i + 4 <= len <= the length of each run: the four 16-byte reads are in bounds; v128_load has no
        // alignment requirement.
        let (w, x, y, z) = unsafe {
            (
                v128_load(a.as_ptr().add(i).cast::<v128>()),
                v128_load(b.as_ptr().add(i).cast::<v128>()),
                v128_load(c.as_ptr().add(i).cast::<v128>()),
                v128_load(d.as_ptr().add(i).cast::<v128>()),
            )
        };
        lanes = u64x2_add(lanes, u64x2_extmul_low_u32x4(w, x));
        lanes = u64x2_add(lanes, u64x2_extmul_high_u32x4(w, x));
        lanes = u64x2_add(lanes, u64x2_extmul_low_u32x4(y, z));
        lanes = u64x2_add(lanes, u64x2_extmul_high_u32x4(y, z));
        i += 4;
    }
    let mut sum = u64x2_extract_lane::<0>(lanes) + u64x2_extract_lane::<1>(lanes);
    while i < len {
        sum += wide_mul(a[i], b[i]) + wide_mul(c[i], d[i]);
        i += 1;
    }
    sum
}

/// Sum of a[i] * b[i] over equal-length runs, four products at a time with wasm SIMD's widening multiplies.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
#[inline(always)]
fn dot(a: &[u32], b: &[u32]) -> u64 {
    use core::arch::wasm32::{
        u64x2_add, u64x2_extmul_high_u32x4, u64x2_extmul_low_u32x4, u64x2_extract_lane, u64x2_splat, v128, v128_load,
    };
    let len = a.len().min(b.len());
    let mut lanes = u64x2_splat(0);
    let mut i = 0;
    while i + 4 <= len {
        // SAFETY: i + 4 <= len <= a.len(), b.len(): both 16-byte reads are in bounds; v128_load has no alignment
        // requirement.
        let (x, y) = unsafe {
            (
                v128_load(a.as_ptr().add(i).cast::<v128>()),
                v128_load(b.as_ptr().add(i).cast::<v128>()),
            )
        };
        lanes = u64x2_add(lanes, u64x2_extmul_low_u32x4(x, y));
        lanes = u64x2_add(lanes, u64x2_extmul_high_u32x4(x, y));
        i += 4;
    }
    let mut sum = u64x2_extract_lane::<0>(lanes) + u64x2_extract_lane::<1>(lanes);
    while i < len {
        sum += wide_mul(a[i], b[i]);
        i += 1;
    }
    sum
}

/// a - b and the final borrow (1 when a < b), limbs normalised.
pub fn sub<const N: usize>(a: &Limbs<N>, b: &Limbs<N>) -> (Limbs<N>, u32) {
    let mut out = [0u32; N];
    let mut borrow = 0u32;
    for i in 0..N {
        let t = a[i].wrapping_sub(b[i]).wrapping_sub(borrow);
        out[i] = t & MASK as u32;
        borrow = t >> 31;
    }
    (out, borrow)
}

/// a + b, limbs normalised (the caller keeps the sum below 2^(28*N)).
pub fn add<const N: usize>(a: &Limbs<N>, b: &Limbs<N>) -> Limbs<N> {
    let mut out = [0u32; N];
    let mut carry = 0u32;
    for i in 0..N {
        let t = a[i] + b[i] + carry;
        out[i] = t & MASK as u32;
        carry = t >> LIMB_BITS;
    }
    out
}

/// `if choice == 1 { a } else { b }` without a branch.
pub fn select<const N: usize>(choice: u32, a: &Limbs<N>, b: &Limbs<N>) -> Limbs<N> {
    let mask = 0u32.wrapping_sub(choice & 1);
    let mut out = [0u32; N];
    for i in 0..N {
        out[i] = (a[i] & mask) | (b[i] & !mask);
    }
    out
}

/// Big-endian bytes to limbs; `None` if the value does not fit.
pub fn from_be_bytes<const N: usize>(bytes: &[u8]) -> Option<Limbs<N>> {
    let mut out = [0u32; N];
    let mut acc: u64 = 0;
    let mut bits = 0u32;
    let mut limb = 0usize;
    for &byte in bytes.iter().rev() {
        acc |= u64::from(byte) << bits;
        bits += 8;
        if bits >= LIMB_BITS {
            let value = (acc & MASK) as u32;
            match out.get_mut(limb) {
                Some(slot) => *slot = value,
                None if value != 0 => return None,
                None => {}
            }
            acc >>= LIMB_BITS;
            bits -= LIMB_BITS;
            limb += 1;
        }
    }
    if acc != 0 {
        *out.get_mut(limb)? = acc as u32;
    }
    Some(out)
}

/// Limbs to `len` big-endian bytes (higher bits must be zero).
pub fn to_be_bytes<const N: usize>(x: &Limbs<N>, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let mut acc: u64 = 0;
    let mut bits = 0u32;
    let mut pos = len;
    for &limb in x {
        if pos == 0 {
            break;
        }
        acc |= u64::from(limb) << bits;
        bits += LIMB_BITS;
        while bits >= 8 && pos > 0 {
            pos -= 1;
            out[pos] = acc as u8;
            acc >>= 8;
            bits -= 8;
        }
    }
    out
}

/// The plain (non-modular) product a * b into 2N limbs.
pub fn mul_wide<const N: usize, const N2: usize>(a: &Limbs<N>, b: &Limbs<N>) -> Limbs<N2> {
    let mut out = [0u32; N2];
    let mut acc: u64 = 0;
    for (k, slot) in out.iter_mut().enumerate().take(2 * N - 1) {
        let low = (k + 1).saturating_sub(N);
        for i in low..=k.min(N - 1) {
            acc += wide_mul(a[i], b[k - i]);
        }
        *slot = (acc & MASK) as u32;
        acc >>= LIMB_BITS;
    }
    if let Some(last) = out.get_mut(2 * N - 1) {
        *last = acc as u32;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crypto_bigint::modular::{BoxedMontyForm, BoxedMontyParams};
    use crypto_bigint::{BoxedUint, NonZero, Odd};

    const N: usize = 10; // 280-bit numbers keep the reference arithmetic quick

    fn big(bytes: &[u8]) -> BoxedUint {
        BoxedUint::from_be_slice(bytes, 1024).unwrap()
    }

    fn random_bytes(len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        getrandom::fill(&mut b).unwrap();
        b
    }

    /// An odd 270-bit modulus and R^2 mod m, R = 2^280.
    fn setup() -> (Modulus<N>, BoxedUint, Limbs<N>, Limbs<N>) {
        let mut mb = random_bytes(34);
        mb[0] = (mb[0] & 0x3f) | 0x20; // 270 bits: well below R/4
        mb[33] |= 1;
        let m = big(&mb);
        let nz = NonZero::new(m.clone()).unwrap();
        let r = BoxedUint::one_with_precision(1024).shl(280);
        let r_mod = r.rem(&nz);
        let r2 = r_mod.mul_mod(&r_mod, &nz);
        let modulus = Modulus::new(from_be_bytes(&mb).unwrap());
        let one = from_be_bytes(&r_mod.to_be_bytes()).unwrap();
        let r2 = from_be_bytes(&r2.to_be_bytes()).unwrap();
        (modulus, m, one, r2)
    }

    fn to_big(x: &Limbs<N>) -> BoxedUint {
        big(&to_be_bytes(x, 35))
    }

    #[test]
    fn byte_conversions_round_trip() {
        for len in [1, 7, 34, 35] {
            let bytes = random_bytes(len);
            let limbs: Limbs<N> = from_be_bytes(&bytes).unwrap();
            let back = to_be_bytes(&limbs, len);
            assert_eq!(back, bytes);
        }
        assert!(from_be_bytes::<2>(&[1u8; 8]).is_none());
    }

    #[test]
    fn mul_square_and_pow_match_crypto_bigint() {
        let (modulus, m, one, r2) = setup();
        let nz = NonZero::new(m.clone()).unwrap();
        for _ in 0..50 {
            let a = big(&random_bytes(33)).rem(&nz);
            let b = big(&random_bytes(33)).rem(&nz);
            let am = modulus.mul(&from_be_bytes(&a.to_be_bytes()).unwrap(), &r2);
            let bm = modulus.mul(&from_be_bytes(&b.to_be_bytes()).unwrap(), &r2);
            let mut plain_one = [0u32; N];
            plain_one[0] = 1;
            let out = |x: &Limbs<N>| to_big(&modulus.reduce(&modulus.mul(x, &plain_one)));
            assert_eq!(out(&modulus.mul(&am, &bm)), a.mul_mod(&b, &nz));
            assert_eq!(out(&modulus.square(&am)), a.mul_mod(&a, &nz));
            let exp = random_bytes(34);
            let want = BoxedMontyForm::new(a.clone(), &BoxedMontyParams::new(Odd::new(m.clone()).unwrap()))
                .pow(&big(&exp))
                .retrieve();
            assert_eq!(out(&modulus.pow(&am, &exp, 272, &one)), want);
        }
    }

    #[test]
    fn helpers() {
        let a: Limbs<N> = from_be_bytes(&[5]).unwrap();
        let b: Limbs<N> = from_be_bytes(&[7]).unwrap();
        assert_eq!(sub(&a, &b).1, 1);
        assert_eq!(sub(&b, &a), (from_be_bytes(&[2]).unwrap(), 0));
        assert_eq!(add(&a, &b), from_be_bytes(&[12]).unwrap());
        assert_eq!(select(1, &a, &b), a);
        assert_eq!(select(0, &a, &b), b);
        let wide: Limbs<20> = mul_wide(
            &from_be_bytes::<N>(&[0xff; 35]).unwrap(),
            &from_be_bytes(&[0xff; 35]).unwrap(),
        );
        assert_eq!(
            big(&to_be_bytes(&wide, 70)),
            big(&[0xff; 35]).mul_mod(
                &big(&[0xff; 35]),
                &NonZero::new(BoxedUint::one_with_precision(1024).shl(1000)).unwrap()
            )
        );
    }
}
