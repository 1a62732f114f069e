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
    m0: [u32; 4],
    /// (-p^-1 mod 2^28, 0, -q^-1 mod 2^28, 0).
    m_prime: [u32; 4],
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
#[inline(always)]
fn reverse<const N: usize, const W: usize>(z: &Pair<W>) -> Pair<W> {
    let mut out = [0u32; W];
    for j in 0..N {
        out[2 * (N - j)] = z[2 * (j + 1)];
        out[2 * (N - j) + 1] = z[2 * (j + 1) + 1];
    }
    out
}

/// Sum over t < pairs of the products of the limb pairs x[xo + 4t..] * y[yo + 4t..] (both 64-bit lanes).
#[inline(always)]
fn dot(x: &[u32], xo: usize, y: &[u32], yo: usize, pairs: usize) -> V {
    let (mut s0, mut s1) = (lanes::zero(), lanes::zero());
    for t in 0..pairs {
        let (a, b) = (lanes::load(x, xo + 4 * t), lanes::load(y, yo + 4 * t));
        s0 = lanes::add64(s0, lanes::mul_lo(a, b));
        s1 = lanes::add64(s1, lanes::mul_hi(a, b));
    }
    lanes::add64(s0, s1)
}

/// dot(x, y) + dot(z, w) over runs at the same offsets, in one loop (four independent sums).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn dot2(x: &[u32], y: &[u32], z: &[u32], w: &[u32], xo: usize, yo: usize, pairs: usize) -> V {
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
            m0: [p[0], q[0], p[0], q[0]],
            m_prime: [neg_inverse(p[0]), 0, neg_inverse(q[0]), 0],
        }
    }

    /// The Montgomery quotient digits u = (acc mod 2^28) (-m^-1) mod 2^28 of both lanes, as (u_p, u_q, u_p, u_q).
    #[inline(always)]
    fn quotient(&self, acc: V) -> V {
        let mask = lanes::from_u32(MASK, 0, MASK, 0);
        let m_prime = lanes::from_u32(self.m_prime[0], 0, self.m_prime[2], 0);
        // (acc mod 2^28) m' < 2^56: its low 32 bits hold the low 28 we need.
        lanes::pack_even(lanes::and(lanes::mul32(lanes::and(acc, mask), m_prime), mask))
    }

    /// Both limbs of a column (acc mod 2^28 per lane) as (x, y, x, y).
    #[inline(always)]
    fn low_limbs(acc: V) -> V {
        lanes::pack_even(lanes::and(acc, lanes::from_u32(MASK, 0, MASK, 0)))
    }

    /// (a_p b_p R^-1 mod p, a_q b_q R^-1 mod q), each below 2m when a b < R m.
    #[inline(always)]
    pub fn mul(&self, a: &Pair<W>, b: &Pair<W>) -> Pair<W> {
        let b_rev = reverse::<N, W>(b);
        let m0 = lanes::from_u32(self.m0[0], self.m0[1], self.m0[2], self.m0[3]);
        let mut u = [0u32; W];
        let mut out = [0u32; W];
        let mut acc = lanes::zero();
        for k in 0..N {
            // Column k: a_i b_(k-i) + u_i m_(k-i) for i in 0..=k (u_k is still zero here), k + 1 terms; an odd
            // count starts one pair early, at i = -1, where a and u read the zero padding.
            let start = k % 2; // position of the first limb: 0 for i = -1, 1 for i = 0
            let pairs = (k + 2) / 2;
            acc = lanes::add64(
                acc,
                dot2(a, &b_rev, &u, &self.m_rev, 2 * start, 2 * (N - 1 - k + start), pairs),
            );
            let q = self.quotient(acc);
            lanes::store2(&mut u, 2 * (k + 1), q);
            acc = lanes::shr28(lanes::add64(acc, lanes::mul_lo(q, m0)));
        }
        for k in N..2 * N - 1 {
            // Column k: i in k+1-N..N, 2N-1-k terms; an odd count ends one pair late, at i = N (padding).
            let low = k + 1 - N;
            let pairs = (2 * N - k) / 2;
            acc = lanes::add64(acc, dot2(a, &b_rev, &u, &self.m_rev, 2 * (low + 1), 2, pairs));
            lanes::store2(&mut out, 2 * (k - N + 1), Self::low_limbs(acc));
            acc = lanes::shr28(acc);
        }
        lanes::store2(&mut out, 2 * N, lanes::pack_even(acc));
        out
    }

    /// (a_p^2 R^-1 mod p, a_q^2 R^-1 mod q): each cross product once, against the doubled operand.
    #[inline(always)]
    pub fn square(&self, a: &Pair<W>) -> Pair<W> {
        let a_rev = reverse::<N, W>(a);
        let mut a2 = [0u32; W];
        for (d, s) in a2.iter_mut().zip(a) {
            *d = s << 1;
        }
        let m0 = lanes::from_u32(self.m0[0], self.m0[1], self.m0[2], self.m0[3]);
        let mut u = [0u32; W];
        let mut out = [0u32; W];
        let mut acc = lanes::zero();
        for k in 0..2 * N - 1 {
            let low = (k + 1).saturating_sub(N);
            // Cross terms 2 a_i a_(k-i) for i in low..half (i < k - i), then a_(k/2)^2 when k is even.
            let half = k.div_ceil(2);
            let terms = half.saturating_sub(low);
            let mut sum = dot(&a2, 2 * (low + 1), &a_rev, 2 * (N + low - k), terms / 2);
            if terms % 2 == 1 {
                let i = half - 1;
                let x = lanes::load2(&a2, 2 * (i + 1));
                let y = lanes::load2(&a_rev, 2 * (N + i - k));
                sum = lanes::add64(sum, lanes::mul_lo(x, y));
            }
            if k % 2 == 0 {
                let x = lanes::load2(a, 2 * (k / 2 + 1));
                sum = lanes::add64(sum, lanes::mul_lo(x, x));
            }
            acc = lanes::add64(acc, sum);
            if k < N {
                // u_i m_(k-i) for i in 0..=k as in `mul`.
                let start = k % 2;
                let pairs = (k + 2) / 2;
                acc = lanes::add64(acc, dot(&u, 2 * start, &self.m_rev, 2 * (N - 1 - k + start), pairs));
                let q = self.quotient(acc);
                lanes::store2(&mut u, 2 * (k + 1), q);
                acc = lanes::shr28(lanes::add64(acc, lanes::mul_lo(q, m0)));
            } else {
                let pairs = (2 * N - k) / 2;
                acc = lanes::add64(acc, dot(&u, 2 * (low + 1), &self.m_rev, 2, pairs));
                lanes::store2(&mut out, 2 * (k - N + 1), Self::low_limbs(acc));
                acc = lanes::shr28(acc);
            }
        }
        lanes::store2(&mut out, 2 * N, lanes::pack_even(acc));
        out
    }

    /// The table entry of index ip in the p-lane and of index iq in the q-lane, by a masked scan of every entry.
    #[inline(always)]
    fn select(table: &[Pair<W>; 1 << WINDOW], ip: u32, iq: u32) -> Pair<W> {
        let mut chosen = [0u32; W];
        for (j, entry) in table.iter().enumerate() {
            let (mp, mq) = (eq_mask(j as u32, ip), eq_mask(j as u32, iq));
            let mask = lanes::from_u32(mp, mq, mp, mq);
            for c in (0..W).step_by(4) {
                let v = lanes::or(lanes::load(&chosen, c), lanes::and(lanes::load(entry, c), mask));
                lanes::store(&mut chosen, c, v);
            }
        }
        chosen
    }

    /// (base_p^exp_p, base_q^exp_q) in Montgomery form, with a fixed 5-bit window: both exponents big-endian and
    /// `bits` (public) bits long; `one` is (R mod p, R mod q).
    pub fn pow(&self, base: &Pair<W>, exp_p: &[u8], exp_q: &[u8], bits: usize, one: &Pair<W>) -> Pair<W> {
        let mut table = [[0u32; W]; 1 << WINDOW];
        table[0] = *one;
        table[1] = *base;
        for i in 2..table.len() {
            table[i] = self.mul(&table[i - 1], base);
        }
        let windows = bits.div_ceil(WINDOW).max(1);
        let top = windows - 1;
        // The top window starts the accumulator (instead of squaring one WINDOW times).
        let mut acc = Self::select(&table, window(exp_p, bits, top), window(exp_q, bits, top));
        for w in (0..top).rev() {
            for _ in 0..WINDOW {
                acc = self.square(&acc);
            }
            let chosen = Self::select(&table, window(exp_p, bits, w), window(exp_q, bits, w));
            acc = self.mul(&acc, &chosen);
        }
        acc
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
