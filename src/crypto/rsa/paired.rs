//! Two Montgomery exponentiations side by side, one per 64-bit SIMD lane: RSA-CRT's x^dp mod p and y^dq mod q.
//!
//! Why: [`super::montgomery`] sums each column of a product in both lanes of a vector and then adds the lanes
//! together, a scalar tail and a horizontal sum per column, and the Montgomery quotient digit of each column waits
//! for that sum. Here lane 0 computes modulo p and lane 1 modulo q: the same column of both products, with no
//! horizontal sum, one quotient-digit chain for both, and squarings that compute each cross product once.
//!
//! Layout ([`Pair`]): the two numbers' 28-bit limbs interleaved, limb i of the p-number at `2 (i + 1)` and of the
//! q-number at `2 (i + 1) + 1`. Position 0 and the positions after the last limb are zero padding: a column whose
//! run of limb pairs has odd length is extended by one pair that reads a padding zero, so no column has a tail.
//! Reversed operands (the b of a column sum a_i b_(k-i)) hold limb j at position N - j.
//!
//! Constant time: loop bounds and memory offsets depend only on N and on the column index, never on a value; the
//! window table is read with a masked scan of every entry; no branch depends on a secret.
//!
//! Bounds (each limb below 2^28, or 2^29 for the doubled squaring operand): a column sums at most 2N products
//! below 2^57 plus a carry below 2^36, far below 2^64 for N = 37; with R = 2^(28 N) > 4m and inputs below 2m,
//! every product and square leaves a result below 2m (as in [`super::montgomery`]).

use super::lanes::{self, V};
use super::montgomery::{neg_inverse, Limbs, LIMB_BITS};

const MASK: u32 = (1 << LIMB_BITS) - 1;
/// Window width of the exponentiation (as in [`super::montgomery::Modulus::pow`]).
const WINDOW: usize = 5;

/// Two N-limb numbers interleaved with zero padding: `W` u32, a multiple of 4 with `2 (N + 2) <= W`.
pub type Pair<const W: usize> = [u32; W];

/// Two odd moduli p, q of N limbs each (both below R/4), for computations in the lanes of a vector.
pub struct PairedModulus<const N: usize, const W: usize> {
    /// Both moduli reversed (limb j at position N - j), for the column sums u_i m_(k-i).
    m_rev: Pair<W>,
    /// (m0 mod p-lane, m0 of q, repeated): the lowest limbs.
    m0: lanes::Aligned,
    /// (-p^-1 mod 2^28, 0, -q^-1 mod 2^28, 0).
    m_prime: [u32; 4],
    /// (2^28 - 1, 0, 2^28 - 1, 0): the low limb of each 64-bit lane. Read from memory rather than written as a
    /// constant: LLVM would otherwise know the zero lanes, turn the widening multiply that follows the quotient
    /// into an `i64x2.mul`, and V8 expands that into nine instructions on the serial chain of every column.
    mask: [u32; 4],
    /// Where each column of a product reads its runs (the same for every product: computed once), and where
    /// each column of a square reads its cross products.
    mul_plan: Vec<Run>,
    square_plan: Vec<Run>,
}

/// One run of a column sum: `pairs` limb pairs from u32 offset `x` of the forward operand (and of u) and from
/// offset `y` of the reversed one (and of m reversed).
#[derive(Clone, Copy)]
struct Run {
    x: u32,
    y: u32,
    pairs: u32,
}

/// The two numbers in the [`Pair`] layout.
pub fn interleave<const N: usize, const W: usize>(x: &Limbs<N>, y: &Limbs<N>) -> Pair<W> {
    const { assert!(W.is_multiple_of(4) && 2 * (N + 2) <= W) };
    let mut out = [0u32; W];
    for i in 0..N {
        out[2 * (i + 1)] = x[i];
        out[2 * (i + 1) + 1] = y[i];
    }
    out
}

/// The two numbers of a [`Pair`].
pub fn split<const N: usize, const W: usize>(z: &Pair<W>) -> (Limbs<N>, Limbs<N>) {
    let mut x = [0u32; N];
    let mut y = [0u32; N];
    for i in 0..N {
        x[i] = z[2 * (i + 1)];
        y[i] = z[2 * (i + 1) + 1];
    }
    (x, y)
}

/// Limb j moved from position j + 1 to position N - j (both numbers), padding stays zero.
fn reverse<const N: usize, const W: usize>(z: &Pair<W>) -> Pair<W> {
    let mut out = [0u32; W];
    reverse_into::<N, W>(z, &mut out);
    out
}

/// [`reverse`] into `out`, whose padding must be zero (only positions 1..=N are written).
#[inline(always)]
fn reverse_into<const N: usize, const W: usize>(z: &Pair<W>, out: &mut Pair<W>) {
    for j in 0..N {
        out[2 * (N - j)] = z[2 * (j + 1)];
        out[2 * (N - j) + 1] = z[2 * (j + 1) + 1];
    }
}

/// Work space of the products and squares of one exponentiation, zeroed once: every product rewrites what it
/// reads except the zero padding (and digit slot 0 of `u`, which it clears itself).
pub struct Scratch<const W: usize> {
    /// The reversed operand.
    rev: Pair<W>,
    /// The doubled operand of a square.
    doubled: Pair<W>,
    /// The squares a_h^2 of a square's operand, four u32 per limb.
    diagonal: [[u32; W]; 2],
    /// The quotient digits.
    u: Pair<W>,
}

impl<const W: usize> Scratch<W> {
    /// All zeros.
    pub fn new() -> Scratch<W> {
        Scratch {
            rev: [0; W],
            doubled: [0; W],
            diagonal: [[0; W]; 2],
            u: [0; W],
        }
    }
}

impl<const W: usize> Default for Scratch<W> {
    fn default() -> Self {
        Self::new()
    }
}

/// Sum over t < pairs of the products of the limb pairs x[xo + 4t..] * y[yo + 4t..] (both 64-bit lanes).
/// Public for the micro-benchmark (bench/rsa-micro).
#[inline(always)]
pub fn dot(x: &[u32], xo: usize, y: &[u32], yo: usize, pairs: usize) -> V {
    let (mut s0, mut s1) = (lanes::zero(), lanes::zero());
    for t in 0..pairs {
        let (a, b) = (lanes::load(x, xo + 4 * t), lanes::load(y, yo + 4 * t));
        s0 = lanes::add64(s0, lanes::mul_lo(a, b));
        s1 = lanes::add64(s1, lanes::mul_hi(a, b));
    }
    lanes::add64(s0, s1)
}

/// dot(x, y) + dot(z, w) over runs at the same offsets, in one loop (four independent sums). Public for the
/// micro-benchmark.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn dot2(x: &[u32], y: &[u32], z: &[u32], w: &[u32], xo: usize, yo: usize, pairs: usize) -> V {
    let (mut s0, mut s1, mut s2, mut s3) = (lanes::zero(), lanes::zero(), lanes::zero(), lanes::zero());
    for t in 0..pairs {
        let (a, b) = (lanes::load(x, xo + 4 * t), lanes::load(y, yo + 4 * t));
        let (c, d) = (lanes::load(z, xo + 4 * t), lanes::load(w, yo + 4 * t));
        s0 = lanes::add64(s0, lanes::mul_lo(a, b));
        s1 = lanes::add64(s1, lanes::mul_hi(a, b));
        s2 = lanes::add64(s2, lanes::mul_lo(c, d));
        s3 = lanes::add64(s3, lanes::mul_hi(c, d));
    }
    lanes::add64(lanes::add64(s0, s1), lanes::add64(s2, s3))
}

/// All-ones when a == b, else zero, without a branch.
#[inline(always)]
fn eq_mask(a: u32, b: u32) -> u32 {
    0u32.wrapping_sub((a ^ b).wrapping_sub(1) >> 31)
}

/// The `WINDOW` bits of a big-endian exponent starting at bit `w * WINDOW` (bits at or above `bits` read 0).
#[inline(always)]
fn window(exp: &[u8], bits: usize, w: usize) -> u32 {
    let mut index: u32 = 0;
    for j in 0..WINDOW {
        let bit = w * WINDOW + j;
        if bit < bits {
            let byte = exp.get(exp.len().wrapping_sub(1 + bit / 8)).copied().unwrap_or(0);
            index |= u32::from((byte >> (bit % 8)) & 1) << j;
        }
    }
    index
}

impl<const N: usize, const W: usize> PairedModulus<N, W> {
    /// `p` and `q` odd and below 2^(28 N - 2); the caller checks (see `crt`).
    pub fn new(p: &Limbs<N>, q: &Limbs<N>) -> PairedModulus<N, W> {
        PairedModulus {
            m_rev: reverse::<N, W>(&interleave(p, q)),
            m0: lanes::Aligned([p[0], q[0], p[0], q[0]]),
            m_prime: [neg_inverse(p[0]), 0, neg_inverse(q[0]), 0],
            mask: [MASK, 0, MASK, 0],
            mul_plan: (0..2 * N - 1).map(Self::mul_run).collect(),
            square_plan: (0..2 * N - 1).map(Self::cross_run).collect(),
        }
    }

    /// The run of cross products 2 a_i a_(k-i), i in low..half (i < k - i), of column k of a square: x is 2a, y is
    /// a reversed. An odd count starts one pair early, at i = low - 1, whose partner is a_N (k >= N) or whose own
    /// limb is the padding a_(-1) (k < N): a zero either way, so no column has a leftover product.
    fn cross_run(k: usize) -> Run {
        let low = (k + 1).saturating_sub(N);
        let terms = k.div_ceil(2).saturating_sub(low);
        let first = low + 1 - terms % 2; // position of the first limb
        Run {
            x: (2 * first) as u32,
            y: (2 * (N + first - 1 - k)) as u32,
            pairs: terms.div_ceil(2) as u32,
        }
    }

    /// The run of column k of a product.
    fn mul_run(k: usize) -> Run {
        let (x, y, pairs) = if k < N {
            // a_i b_(k-i) + u_i m_(k-i) for i in 0..=k (u_k is still zero then), k + 1 terms; an odd count starts
            // one pair early, at i = -1, where a and u read the zero padding.
            let start = k % 2; // position of the first limb: 0 for i = -1, 1 for i = 0
            (2 * start, 2 * (N - 1 - k + start), (k + 2) / 2)
        } else {
            // i in k+1-N..N, 2N-1-k terms; an odd count ends one pair late, at i = N (padding).
            (2 * (k + 2 - N), 2, (2 * N - k) / 2)
        };
        Run {
            x: x as u32,
            y: y as u32,
            pairs: pairs as u32,
        }
    }

    /// The Montgomery quotient digits u = (acc mod 2^28) (-m^-1) mod 2^28 of both lanes, as (u_p, u_q, u_p, u_q).
    #[inline(always)]
    fn quotient(&self, acc: V) -> V {
        let mask = lanes::load(&self.mask, 0);
        let m_prime = lanes::load(&self.m_prime, 0);
        // (acc mod 2^28) m' < 2^56: its low 32 bits hold the low 28 we need.
        lanes::pack_even(lanes::and(lanes::mul32(lanes::and(acc, mask), m_prime), mask))
    }

    /// Both limbs of a column (acc mod 2^28 per lane) as (x, y, x, y).
    #[inline(always)]
    fn low_limbs(acc: V) -> V {
        lanes::pack_even(lanes::and(acc, lanes::from_u32(MASK, 0, MASK, 0)))
    }

    /// (a_p b_p R^-1 mod p, a_q b_q R^-1 mod q), each below 2m when a b < R m.
    pub fn mul(&self, a: &Pair<W>, b: &Pair<W>) -> Pair<W> {
        let mut out = [0u32; W];
        self.mul_into(a, b, &mut Scratch::new(), &mut out);
        out
    }

    /// [`Self::mul`] into `out`, whose padding must be zero (it stays zero), with reusable scratch space.
    #[inline(always)]
    pub fn mul_into(&self, a: &Pair<W>, b: &Pair<W>, scratch: &mut Scratch<W>, out: &mut Pair<W>) {
        reverse_into::<N, W>(b, &mut scratch.rev);
        let (b_rev, u) = (&scratch.rev, &mut scratch.u);
        Self::clear_first_digit(u);
        let mut acc = lanes::zero();
        let (low_half, high_half) = self.mul_plan.split_at(N);
        for (k, run) in low_half.iter().enumerate() {
            let (x, y, pairs) = (run.x as usize, run.y as usize, run.pairs as usize);
            acc = lanes::add64(acc, dot2(a, b_rev, u, &self.m_rev, x, y, pairs));
            acc = self.reduce_digit(k, acc, u);
        }
        for (j, run) in high_half.iter().enumerate() {
            let (x, y, pairs) = (run.x as usize, run.y as usize, run.pairs as usize);
            acc = lanes::add64(acc, dot2(a, b_rev, u, &self.m_rev, x, y, pairs));
            lanes::store2(out, 2 * (j + 1), Self::low_limbs(acc));
            acc = lanes::shr28(acc);
        }
        lanes::store2(out, 2 * N, lanes::pack_even(acc));
    }

    /// Zeroes digit slot 0 of `u` before a product: column k reads slot k before it writes it, and the digit
    /// stores below zero slot k + 1 on the way (so the scratch needs no clearing between products).
    #[inline(always)]
    fn clear_first_digit(u: &mut Pair<W>) {
        lanes::store2(u, 2, lanes::zero());
    }

    /// The quotient digit u_k of column k < N: stored with slot k + 1 zeroed in one 16-byte store (which the next
    /// column's last 16-byte load of u can take straight from the store buffer), and the column's carry
    /// (acc + u_k m_0) >> 28 returned.
    #[inline(always)]
    fn reduce_digit(&self, k: usize, acc: V, u: &mut Pair<W>) -> V {
        let q = self.quotient(acc);
        lanes::store(u, 2 * (k + 1), lanes::and(q, lanes::from_u32(!0, !0, 0, 0)));
        lanes::shr28(lanes::add64(acc, lanes::mul_lo(q, lanes::load_fresh(&self.m0))))
    }

    /// (a_p^2 R^-1 mod p, a_q^2 R^-1 mod q): each cross product once, against the doubled operand.
    pub fn square(&self, a: &Pair<W>) -> Pair<W> {
        let mut out = [0u32; W];
        self.square_into(a, &mut Scratch::new(), &mut out);
        out
    }

    /// [`Self::square`] into `out`, whose padding must be zero (it stays zero), with reusable scratch space.
    #[inline(always)]
    pub fn square_into(&self, a: &Pair<W>, scratch: &mut Scratch<W>, out: &mut Pair<W>) {
        reverse_into::<N, W>(a, &mut scratch.rev);
        for (d, s) in scratch.doubled.iter_mut().zip(a) {
            *d = s << 1;
        }
        // The squares a_h^2 (both lanes, 64 bits each) at u32 offset 4h, two limbs per pair of multiplies (a
        // single-limb multiply would let LLVM narrow it into an i64x2.mul, which V8 expands to nine
        // instructions). 4 (N + 1) <= 2W.
        let diagonal = scratch.diagonal.as_flattened_mut();
        for h in (0..N).step_by(2) {
            let x = lanes::load(a, 2 * (h + 1));
            lanes::store(diagonal, 4 * h, lanes::mul_lo(x, x));
            lanes::store(diagonal, 4 * h + 4, lanes::mul_hi(x, x));
        }
        let (a2, a_rev, u) = (&scratch.doubled, &scratch.rev, &mut scratch.u);
        let diagonal = scratch.diagonal.as_flattened();
        Self::clear_first_digit(u);
        let mut acc = lanes::zero();
        let (low_half, high_half) = self.mul_plan.split_at(N);
        let (cross_low, cross_high) = self.square_plan.split_at(N);
        for (k, (cross, run)) in cross_low.iter().zip(low_half).enumerate() {
            acc = lanes::add64(acc, Self::square_terms(k, a2, a_rev, diagonal, cross));
            acc = lanes::add64(
                acc,
                dot(u, run.x as usize, &self.m_rev, run.y as usize, run.pairs as usize),
            );
            acc = self.reduce_digit(k, acc, u);
        }
        for (j, (cross, run)) in cross_high.iter().zip(high_half).enumerate() {
            acc = lanes::add64(acc, Self::square_terms(N + j, a2, a_rev, diagonal, cross));
            acc = lanes::add64(
                acc,
                dot(u, run.x as usize, &self.m_rev, run.y as usize, run.pairs as usize),
            );
            lanes::store2(out, 2 * (j + 1), Self::low_limbs(acc));
            acc = lanes::shr28(acc);
        }
        lanes::store2(out, 2 * N, lanes::pack_even(acc));
    }

    /// The square's own terms of column k: the cross products (a2 = 2a against a reversed) and a_(k/2)^2.
    #[inline(always)]
    fn square_terms(k: usize, a2: &Pair<W>, a_rev: &Pair<W>, diagonal: &[u32], cross: &Run) -> V {
        let sum = dot(a2, cross.x as usize, a_rev, cross.y as usize, cross.pairs as usize);
        if k.is_multiple_of(2) {
            lanes::add64(sum, lanes::load(diagonal, 2 * k))
        } else {
            sum
        }
    }

    /// The table entry of index ip in the p-lane and of index iq in the q-lane, by a masked scan of every entry.
    #[inline(always)]
    fn select(table: &[Pair<W>; 1 << WINDOW], ip: u32, iq: u32) -> Pair<W> {
        let mut chosen = [0u32; W];
        Self::select_into(table, ip, iq, &mut chosen);
        chosen
    }

    /// [`Self::select`] into `chosen` (every word is written).
    #[inline(always)]
    fn select_into(table: &[Pair<W>; 1 << WINDOW], ip: u32, iq: u32, chosen: &mut Pair<W>) {
        let mut masks = [lanes::zero(); 1 << WINDOW];
        for (j, mask) in masks.iter_mut().enumerate() {
            let (mp, mq) = (eq_mask(j as u32, ip), eq_mask(j as u32, iq));
            *mask = lanes::from_u32(mp, mq, mp, mq);
        }
        // Chunk by chunk, every entry and-ed with its mask and or-ed in a register.
        for c in (0..W).step_by(4) {
            let mut v = lanes::zero();
            for (entry, mask) in table.iter().zip(&masks) {
                v = lanes::or(v, lanes::and(lanes::load(entry, c), *mask));
            }
            lanes::store(chosen, c, v);
        }
    }

    /// (base_p^exp, base_q^exp) for a PUBLIC exponent (e.g. RSA's e = 65537) shared by both lanes, by
    /// left-to-right square-and-multiply: its time depends on the exponent's bits, which is why it must never
    /// see a secret one. Montgomery form in and out, `exp_bits` >= 1, base below 4m.
    pub fn pow_public(&self, base: &Pair<W>, exp: &[u8], exp_bits: usize) -> Pair<W> {
        let mut scratch = Scratch::new();
        let (mut acc, mut buffer) = (*base, [0u32; W]);
        let (mut cur, mut next) = (&mut acc, &mut buffer);
        for bit in (0..exp_bits.saturating_sub(1)).rev() {
            self.square_into(cur, &mut scratch, next);
            core::mem::swap(&mut cur, &mut next);
            let byte = exp.get(exp.len().wrapping_sub(1 + bit / 8)).copied().unwrap_or(0);
            if (byte >> (bit % 8)) & 1 == 1 {
                self.mul_into(cur, base, &mut scratch, next);
                core::mem::swap(&mut cur, &mut next);
            }
        }
        *cur
    }

    /// (base_p^exp_p, base_q^exp_q) in Montgomery form, with a fixed 5-bit window: both exponents big-endian and
    /// `bits` (public) bits long; `one` is (R mod p, R mod q).
    pub fn pow(&self, base: &Pair<W>, exp_p: &[u8], exp_q: &[u8], bits: usize, one: &Pair<W>) -> Pair<W> {
        let mut scratch = Scratch::new();
        let mut table = [[0u32; W]; 1 << WINDOW];
        table[0] = *one;
        table[1] = *base;
        for i in 2..table.len() {
            let (done, rest) = table.split_at_mut(i);
            // Even entries as squares of half their index (cheaper than a product).
            if i % 2 == 0 {
                self.square_into(&done[i / 2], &mut scratch, &mut rest[0]);
            } else {
                self.mul_into(&done[i - 1], base, &mut scratch, &mut rest[0]);
            }
        }
        let windows = bits.div_ceil(WINDOW).max(1);
        let top = windows - 1;
        // The top window starts the accumulator (instead of squaring one WINDOW times). Two buffers take turns
        // as input and output (their padding stays zero).
        let (mut buffer, mut chosen) = ([0u32; W], [0u32; W]);
        let mut acc = Self::select(&table, window(exp_p, bits, top), window(exp_q, bits, top));
        let (mut cur, mut next) = (&mut acc, &mut buffer);
        for w in (0..top).rev() {
            for _ in 0..WINDOW {
                self.square_into(cur, &mut scratch, next);
                core::mem::swap(&mut cur, &mut next);
            }
            Self::select_into(&table, window(exp_p, bits, w), window(exp_q, bits, w), &mut chosen);
            self.mul_into(cur, &chosen, &mut scratch, next);
            core::mem::swap(&mut cur, &mut next);
        }
        *cur
    }
}

#[cfg(test)]
mod tests {
    use super::super::montgomery::{self, Modulus};
    use super::*;
    use crypto_bigint::modular::{BoxedMontyForm, BoxedMontyParams};
    use crypto_bigint::{BoxedUint, NonZero, Odd};

    fn random_bytes(len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        getrandom::fill(&mut b).unwrap();
        b
    }

    fn big(bytes: &[u8]) -> BoxedUint {
        BoxedUint::from_be_slice(bytes, 2048).unwrap()
    }

    /// An odd modulus of `bits` bits (bits <= 28 N - 4) with R mod m and R^2 mod m, R = 2^(28 N).
    fn modulus<const N: usize>(bits: usize) -> (Limbs<N>, BoxedUint, Limbs<N>, Limbs<N>) {
        let len = bits.div_ceil(8);
        let mut mb = random_bytes(len);
        let top = bits - 8 * (len - 1); // bits in the first byte
        mb[0] = (mb[0] & ((1u16 << top) - 1) as u8) | (1 << (top - 1));
        mb[len - 1] |= 1;
        let m = big(&mb);
        let nz = NonZero::new(m.clone()).unwrap();
        let r = BoxedUint::one_with_precision(2048).shl(28 * N as u32).rem(&nz);
        let r2 = r.mul_mod(&r, &nz);
        let limbs = montgomery::from_be_bytes(&mb).unwrap();
        let to = |x: &BoxedUint| montgomery::from_be_bytes::<N>(&x.to_be_bytes()).unwrap();
        (limbs, m, to(&r), to(&r2))
    }

    fn to_big<const N: usize>(x: &Limbs<N>) -> BoxedUint {
        big(&montgomery::to_be_bytes(x, (28 * N).div_ceil(8)))
    }

    /// Paired mul, square and pow equal two single-modulus computations and crypto-bigint, for random values
    /// (top limbs included) and random exponents.
    fn check<const N: usize, const W: usize>(bits: usize, rounds: usize) {
        let (p, pb, p_one, p_r2) = modulus::<N>(bits);
        let (q, qb, q_one, q_r2) = modulus::<N>(bits - 1);
        let (sp, sq) = (Modulus::new(p), Modulus::new(q));
        let paired = PairedModulus::<N, W>::new(&p, &q);
        let mut plain_one = [0u32; N];
        plain_one[0] = 1;
        let (p_nz, q_nz) = (NonZero::new(pb.clone()).unwrap(), NonZero::new(qb.clone()).unwrap());
        for _ in 0..rounds {
            let x = big(&random_bytes(bits.div_ceil(8) + 1)).rem(&p_nz);
            let y = big(&random_bytes(bits.div_ceil(8) + 1)).rem(&q_nz);
            let xm = sp.mul(&montgomery::from_be_bytes(&x.to_be_bytes()).unwrap(), &p_r2);
            let ym = sq.mul(&montgomery::from_be_bytes(&y.to_be_bytes()).unwrap(), &q_r2);
            // Values up to 2m - 1 (what the kernel sees between steps): x + p as well.
            let xm2 = montgomery::add(&xm, &p);
            let a = interleave::<N, W>(&xm2, &ym);
            let b = interleave::<N, W>(&xm, &montgomery::add(&ym, &q));
            let (mp, mq) = split::<N, W>(&paired.mul(&a, &b));
            assert_eq!(mp, sp.mul(&xm2, &xm));
            assert_eq!(mq, sq.mul(&ym, &montgomery::add(&ym, &q)));
            let (qp, qq) = split::<N, W>(&paired.square(&a));
            assert_eq!(sp.reduce(&qp), sp.reduce(&sp.square(&xm2)));
            assert_eq!(sq.reduce(&qq), sq.reduce(&sq.square(&ym)));
            let out_p = |v: &Limbs<N>| to_big(&sp.reduce(&sp.mul(v, &plain_one)));
            let out_q = |v: &Limbs<N>| to_big(&sq.reduce(&sq.mul(v, &plain_one)));
            assert_eq!(out_p(&qp), x.mul_mod(&x, &p_nz));
            assert_eq!(out_q(&qq), y.mul_mod(&y, &q_nz));
            let (ep, eq) = (random_bytes(bits.div_ceil(8)), random_bytes(bits.div_ceil(8)));
            let e_bits = 8 * ep.len();
            let one = interleave::<N, W>(&p_one, &q_one);
            let (rp, rq) = split::<N, W>(&paired.pow(&interleave(&xm, &ym), &ep, &eq, e_bits, &one));
            let want_p = BoxedMontyForm::new(x.clone(), &BoxedMontyParams::new(Odd::new(pb.clone()).unwrap()))
                .pow(&big(&ep))
                .retrieve();
            let want_q = BoxedMontyForm::new(y.clone(), &BoxedMontyParams::new(Odd::new(qb.clone()).unwrap()))
                .pow(&big(&eq))
                .retrieve();
            assert_eq!(out_p(&rp), want_p);
            assert_eq!(out_q(&rq), want_q);
            assert_eq!(out_p(&rp), out_p(&sp.pow(&xm, &ep, e_bits, &p_one)));
            let e = [0x01, 0x00, 0x01];
            let (vp, vq) = split::<N, W>(&paired.pow_public(&interleave(&xm2, &ym), &e, 17));
            assert_eq!(out_p(&vp), out_p(&sp.pow_public(&xm2, &e, 17)));
            assert_eq!(out_q(&vq), out_q(&sq.pow_public(&ym, &e, 17)));
            assert_eq!(out_q(&rq), out_q(&sq.pow(&ym, &eq, e_bits, &q_one)));
        }
    }

    #[test]
    fn small_moduli_match_single_lane_and_crypto_bigint() {
        check::<10, 24>(270, 40);
        check::<3, 12>(80, 40);
    }

    #[test]
    fn rsa_2048_prime_size_matches_single_lane_and_crypto_bigint() {
        check::<37, 80>(1024, 6);
    }

    #[test]
    fn layout_round_trips_and_pads_with_zeros() {
        let x: Limbs<3> = [1, 2, 3];
        let y: Limbs<3> = [4, 5, 6];
        let z = interleave::<3, 12>(&x, &y);
        assert_eq!(z, [0, 0, 1, 4, 2, 5, 3, 6, 0, 0, 0, 0]);
        assert_eq!(split::<3, 12>(&z), (x, y));
        assert_eq!(reverse::<3, 12>(&z), [0, 0, 3, 6, 2, 5, 1, 4, 0, 0, 0, 0]);
    }
}
