//! A faster constant-time RS256 signer for 2048-bit keys: RSA-CRT on [`super::montgomery`] arithmetic, with
//! the key's Montgomery constants computed once when the key is loaded instead of on every signature. With wasm
//! SIMD the two exponentiations (mod p and mod q) run at once, one per vector lane ([`super::paired`]).
//!
//! A signature works on the residues mod p and mod q only: blind, exponentiate, unblind, then Garner's
//! recombination into s mod n, then the check s^e = m mod p and mod q (equivalent to mod n by the CRT).
//!
//! Side-channel defences:
//! - every operation on secret values is constant time (see `montgomery` and `paired`);
//! - base blinding: the message is multiplied by r^e before exponentiation and the result by r^-1 after, so
//!   the exponentiations never see a value an attacker chose. The pair (r^e, r^-1), kept as residues, is
//!   updated by squaring after each signature and regenerated from fresh randomness every [`BLINDING_REFRESH`]
//!   signatures (the scheme OpenSSL and BoringSSL use); the fresh r are drawn and inverted eight at a time;
//! - every signature is verified (s^e == m) before it leaves, so a fault in the CRT computation can never
//!   release a signature that would leak a prime (Boneh-DeMillo-Lipton).
//!
//! Other key sizes use the `rsa` crate's signer.

use std::sync::Mutex;

use ::rsa::traits::{PrivateKeyParts, PublicKeyParts};
use crypto_bigint::{BoxedUint, NonZero, Resize};
use sha2::{Digest, Sha256};

use super::montgomery::{self, Limbs, Modulus, LIMB_BITS};
use super::paired::{self, Pair, PairedModulus};
use crate::crypto::{KeyError, KeyType};

/// Limbs of a 1024-bit prime: 37 * 28 = 1036 bits, so R = 2^1036 > 4p.
const P_LIMBS: usize = 37;
/// Limbs of a 2048-bit number (the message, the signature): 74 * 28 = 2072 bits.
const N_LIMBS: usize = 74;
/// u32 of a pair of prime-sized numbers interleaved with padding (see `paired`).
const PAIR_WORDS: usize = 80;
const MODULUS_BYTES: usize = 256;
const PRIME_BYTES: usize = 128;
/// The paired kernel where it is faster: with wasm SIMD (where it is about 1.5x faster than two single-lane
/// exponentiations in V8). Natively, the portable emulation of its vector lanes is about 2x slower than the scalar
/// single-lane code, which stays.
const PAIRED: bool = cfg!(all(target_arch = "wasm32", target_feature = "simd128"));
/// Signatures between two regenerations of the blinding pair from fresh randomness.
pub const BLINDING_REFRESH: u32 = 32;
/// Blinding values drawn and inverted together (Montgomery's trick: one inversion, an exponentiation, for all
/// of them): the expensive refresh comes every BLINDING_BATCH * BLINDING_REFRESH = 256 signatures, beyond the
/// 99th percentile, and the others cost a public-exponent power.
const BLINDING_BATCH: usize = 8;
/// Working precision for the one-time precomputations with crypto-bigint.
const PRECISION: u32 = 64 * 70;

/// DER prefix of a SHA-256 DigestInfo (RFC 8017 section 9.2, note 1).
const SHA256_DIGEST_INFO: [u8; 19] = [
    0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20,
];

struct Prime {
    modulus: Modulus<P_LIMBS>,
    /// R mod p (Montgomery one), R^2 mod p, R^3 mod p.
    one: Limbs<P_LIMBS>,
    r2: Limbs<P_LIMBS>,
    r3: Limbs<P_LIMBS>,
    /// The CRT exponent (d mod (p-1)), big-endian, PRIME_BYTES long.
    exponent: Vec<u8>,
    /// p - 2, big-endian: x^(p-2) = x^-1 mod p (Fermat), for the blinding inverse without a gcd.
    p_minus_2: Vec<u8>,
}

struct Blinding {
    /// (r^e R mod p, r^e R mod q) and (r^-1 R mod p, r^-1 R mod q): the pair as residues, in Montgomery form.
    r_pow_e: Pair<PAIR_WORDS>,
    r_inv: Pair<PAIR_WORDS>,
    uses: u32,
    /// Fresh (r R, r^-1 R) residue pairs, drawn and inverted together, for the next refreshes.
    spare: Vec<(Pair<PAIR_WORDS>, Pair<PAIR_WORDS>)>,
}

/// The two primes, for arithmetic on residue pairs (x mod p, x mod q) held in the interleaved layout of
/// `paired`: both lanes at once with wasm SIMD, otherwise one prime after the other on the scalar code.
struct Primes {
    p: Prime,
    q: Prime,
    pair: PairedModulus<P_LIMBS, PAIR_WORDS>,
    /// (R mod p, R mod q).
    one: Pair<PAIR_WORDS>,
    /// Whether to run paired ([`PAIRED`]; the tests run both ways).
    paired: bool,
}

impl Primes {
    /// (a b R^-1 mod p, mod q), each below 2m when a b < R m (e.g. a below 4m, b below 2m).
    fn mul(&self, a: &Pair<PAIR_WORDS>, b: &Pair<PAIR_WORDS>) -> Pair<PAIR_WORDS> {
        if self.paired {
            return self.pair.mul(a, b);
        }
        let ((a_p, a_q), (b_p, b_q)) = (paired::split(a), paired::split(b));
        paired::interleave(&self.p.modulus.mul(&a_p, &b_p), &self.q.modulus.mul(&a_q, &b_q))
    }

    /// (a^2 R^-1 mod p, mod q).
    fn square(&self, a: &Pair<PAIR_WORDS>) -> Pair<PAIR_WORDS> {
        if self.paired {
            return self.pair.square(a);
        }
        let (a_p, a_q) = paired::split(a);
        paired::interleave(&self.p.modulus.square(&a_p), &self.q.modulus.square(&a_q))
    }

    /// (base^exp_p mod p, base^exp_q mod q), Montgomery form in and out, constant time in the base and in both
    /// (secret) exponents, each PRIME_BYTES long.
    fn pow(&self, base: &Pair<PAIR_WORDS>, exp_p: &[u8], exp_q: &[u8]) -> Pair<PAIR_WORDS> {
        let bits = PRIME_BYTES * 8;
        if self.paired {
            return self.pair.pow(base, exp_p, exp_q, bits, &self.one);
        }
        let (b_p, b_q) = paired::split(base);
        paired::interleave(
            &self.p.modulus.pow(&b_p, exp_p, bits, &self.p.one),
            &self.q.modulus.pow(&b_q, exp_q, bits, &self.q.one),
        )
    }

    /// (base^exp mod p, mod q) for a PUBLIC exponent (time depends on its bits), Montgomery form in and out.
    fn pow_public(&self, base: &Pair<PAIR_WORDS>, exp: &[u8], exp_bits: usize) -> Pair<PAIR_WORDS> {
        if self.paired {
            return self.pair.pow_public(base, exp, exp_bits);
        }
        let (b_p, b_q) = paired::split(base);
        paired::interleave(
            &self.p.modulus.pow_public(&b_p, exp, exp_bits),
            &self.q.modulus.pow_public(&b_q, exp, exp_bits),
        )
    }

    /// (x R mod p, x R mod q), each below 4m, for x < 2^2072: the Montgomery forms of x's residues.
    fn montgomery_form(&self, x: &Limbs<N_LIMBS>) -> Pair<PAIR_WORDS> {
        paired::interleave(&self.p.montgomery_form(x), &self.q.montgomery_form(x))
    }

    /// (z_p R^-1 mod p, z_q R^-1 mod q), canonical (below p and q).
    fn canonical(&self, z: &Pair<PAIR_WORDS>) -> (Limbs<P_LIMBS>, Limbs<P_LIMBS>) {
        let (z_p, z_q) = paired::split(z);
        (self.p.canonical(&z_p), self.q.canonical(&z_q))
    }
}

/// An RSA-2048 key prepared for constant-time CRT signing with base blinding.
pub struct RsaCrt2048 {
    primes: Primes,
    q_limbs: Limbs<P_LIMBS>,
    two_p: Limbs<P_LIMBS>,
    /// q^-1 * R mod p.
    q_inv_r: Limbs<P_LIMBS>,
    e: BoxedUint,
    e_bytes: Vec<u8>,
    blinding: Mutex<Blinding>,
    /// Signatures per blinding pair: [`BLINDING_REFRESH`] (the tests shorten it to pass several batches).
    refresh_every: u32,
}

fn wide(value: &BoxedUint) -> BoxedUint {
    value.resize(PRECISION)
}

fn nonzero(value: &BoxedUint) -> Result<NonZero<BoxedUint>, KeyError> {
    NonZero::new(wide(value)).into_option().ok_or(KeyError::Malformed {
        key_type: KeyType::Rsa,
        format: "zero modulus",
    })
}

/// 2^bits mod m.
fn pow2_mod(bits: u32, m: &NonZero<BoxedUint>) -> BoxedUint {
    BoxedUint::one_with_precision(PRECISION).shl(bits).rem(m)
}

fn limbs<const N: usize>(value: &BoxedUint) -> Result<Limbs<N>, KeyError> {
    montgomery::from_be_bytes(&value.to_be_bytes()).ok_or(KeyError::Malformed {
        key_type: KeyType::Rsa,
        format: "value out of range",
    })
}

fn be_bytes(value: &BoxedUint, len: usize) -> Vec<u8> {
    let bytes = value.to_be_bytes();
    let start = bytes.len().saturating_sub(len);
    let mut out = vec![0u8; len.saturating_sub(bytes.len() - start)];
    out.extend_from_slice(&bytes[start..]);
    out
}

impl Prime {
    fn new(prime: &BoxedUint, exponent: &BoxedUint) -> Result<Prime, KeyError> {
        let m = nonzero(prime)?;
        let r = pow2_mod(LIMB_BITS * P_LIMBS as u32, &m);
        let r2 = r.mul_mod(&r, &m);
        let r3 = r2.mul_mod(&r, &m);
        Ok(Prime {
            modulus: Modulus::new(limbs(prime)?),
            one: limbs(&r)?,
            r2: limbs(&r2)?,
            r3: limbs(&r3)?,
            exponent: be_bytes(exponent, PRIME_BYTES),
            p_minus_2: be_bytes(&prime.wrapping_sub(BoxedUint::from(2u64)), PRIME_BYTES),
        })
    }

    /// c * R mod p (below 4p) for c < 2^2072: the Montgomery form of c mod p.
    fn montgomery_form(&self, c: &Limbs<N_LIMBS>) -> Limbs<P_LIMBS> {
        let mut low = [0u32; P_LIMBS];
        let mut high = [0u32; P_LIMBS];
        low.copy_from_slice(&c[..P_LIMBS]);
        high.copy_from_slice(&c[P_LIMBS..]);
        let m = &self.modulus;
        // c * R = low * R + high * R^2 (mod p).
        montgomery::add(&m.mul(&low, &self.r2), &m.mul(&high, &self.r3))
    }

    /// x R^-1 mod p, canonical (below p), for any x below R (the product x * 1 is below R p, so one
    /// conditional subtraction finishes it).
    fn canonical(&self, x: &Limbs<P_LIMBS>) -> Limbs<P_LIMBS> {
        let mut plain_one = [0u32; P_LIMBS];
        plain_one[0] = 1;
        let m = &self.modulus;
        m.reduce(&m.mul(x, &plain_one))
    }
}

impl RsaCrt2048 {
    /// The fast signer for a two-prime 2048-bit key with 1024-bit primes; `None` for any other shape.
    pub fn new(key: &rsa::PrivateKey) -> Option<RsaCrt2048> {
        let primes = key.primes();
        if key.n_bytes().len() != MODULUS_BYTES || primes.len() != 2 {
            return None;
        }
        let (p, q) = (primes[0].as_ref(), primes[1].as_ref());
        if p.bit_width() != 1024 || q.bit_width() != 1024 {
            return None;
        }
        Self::build(key, p, q).ok()
    }

    fn build(key: &rsa::PrivateKey, p: &BoxedUint, q: &BoxedUint) -> Result<RsaCrt2048, KeyError> {
        let dp = key.dp().ok_or(KeyError::Malformed {
            key_type: KeyType::Rsa,
            format: "missing CRT exponent",
        })?;
        let dq = key.dq().ok_or(KeyError::Malformed {
            key_type: KeyType::Rsa,
            format: "missing CRT exponent",
        })?;
        let p_nz = nonzero(p)?;
        let q_inv = wide(q).invert_mod(&p_nz).into_option().ok_or(KeyError::Malformed {
            key_type: KeyType::Rsa,
            format: "q has no inverse mod p",
        })?;
        let r_p = pow2_mod(LIMB_BITS * P_LIMBS as u32, &p_nz);
        let p_limbs: Limbs<P_LIMBS> = limbs(p)?;
        let q_limbs: Limbs<P_LIMBS> = limbs(q)?;
        let (p_prime, q_prime) = (Prime::new(p, dp)?, Prime::new(q, dq)?);
        let signer = RsaCrt2048 {
            primes: Primes {
                pair: PairedModulus::new(&p_limbs, &q_limbs),
                one: paired::interleave(&p_prime.one, &q_prime.one),
                paired: PAIRED,
                p: p_prime,
                q: q_prime,
            },
            q_limbs,
            two_p: montgomery::add(&p_limbs, &p_limbs),
            q_inv_r: limbs(&q_inv.mul_mod(&r_p, &p_nz))?,
            e: wide(key.e()),
            e_bytes: key.e().to_be_bytes().to_vec(),
            blinding: Mutex::new(Blinding {
                r_pow_e: [0; PAIR_WORDS],
                r_inv: [0; PAIR_WORDS],
                uses: BLINDING_REFRESH,
                spare: Vec::new(),
            }),
            refresh_every: BLINDING_REFRESH,
        };
        Ok(signer)
    }

    /// Starts a fresh blinding pair (r^e, r^-1) from a spare (r, r^-1), drawing a new batch of spares when none
    /// is left: r^e costs a public-exponent power.
    fn refresh(&self, blinding: &mut Blinding) -> Result<(), KeyError> {
        if blinding.spare.is_empty() {
            blinding.spare = self.blinding_batch()?;
        }
        let (r_mont, r_inv) = blinding.spare.pop().ok_or(KeyError::Sign(KeyType::Rsa))?;
        blinding.r_pow_e = self
            .primes
            .pow_public(&r_mont, &self.e_bytes, self.e.bit_width() as usize);
        blinding.r_inv = r_inv;
        blinding.uses = 0;
        Ok(())
    }

    /// BLINDING_BATCH random r from the OS random source with their inverses, as residues mod p and q in
    /// Montgomery form (nothing here needs them mod n). One inversion for all (Montgomery's trick: invert the
    /// product, then peel the factors off with two products each), and the inversion is Fermat's
    /// (x^(p-2) mod p, x^(q-2) mod q, both at once) on the constant-time code: about one signature's work for
    /// the whole batch, not the hundreds of milliseconds a 2048-bit gcd inverse takes in wasm.
    fn blinding_batch(&self) -> Result<Vec<(Pair<PAIR_WORDS>, Pair<PAIR_WORDS>)>, KeyError> {
        let primes = &self.primes;
        let mut plain_one = [0u32; P_LIMBS];
        plain_one[0] = 1;
        for _ in 0..8 {
            let mut r = Vec::with_capacity(BLINDING_BATCH);
            for _ in 0..BLINDING_BATCH {
                let mut bytes = [0u8; MODULUS_BYTES];
                getrandom::fill(&mut bytes).map_err(|_| KeyError::Sign(KeyType::Rsa))?;
                let value: Limbs<N_LIMBS> = montgomery::from_be_bytes(&bytes).ok_or(KeyError::Sign(KeyType::Rsa))?;
                r.push(primes.montgomery_form(&value));
            }
            // prefix[i] = r_0 ... r_i (Montgomery form is kept by products).
            let mut prefix = Vec::with_capacity(BLINDING_BATCH);
            prefix.push(r[0]);
            for i in 1..BLINDING_BATCH {
                prefix.push(primes.mul(&prefix[i - 1], &r[i]));
            }
            let mut inverse = primes.pow(&prefix[BLINDING_BATCH - 1], &primes.p.p_minus_2, &primes.q.p_minus_2);
            let mut batch = vec![([0u32; PAIR_WORDS], [0u32; PAIR_WORDS]); BLINDING_BATCH];
            for i in (1..BLINDING_BATCH).rev() {
                // inverse = (r_0 ... r_i)^-1: r_i^-1 = inverse * prefix[i-1], then drop r_i from it.
                batch[i] = (r[i], primes.mul(&inverse, &prefix[i - 1]));
                inverse = primes.mul(&inverse, &r[i]);
            }
            batch[0] = (r[0], inverse);
            // A factor that is 0 mod p or mod q (probability about 2^-1020) makes the product 0 and every
            // "inverse" wrong: then r * r^-1 != 1 for some pair: draw the batch again.
            if batch
                .iter()
                .all(|(x, x_inv)| primes.canonical(&primes.mul(x, x_inv)) == (plain_one, plain_one))
            {
                return Ok(batch);
            }
        }
        Err(KeyError::Sign(KeyType::Rsa))
    }

    /// Garner's CRT recombination: the x < n with x = s_p mod p and x = s_q mod q (canonical inputs).
    fn recombine(&self, s_p: &Limbs<P_LIMBS>, s_q: &Limbs<P_LIMBS>) -> Limbs<N_LIMBS> {
        // h = (s_p - s_q) q^-1 mod p; x = s_q + h q. s_q < q < 2p, so s_p + 2p - s_q > 0.
        let (difference, _) = montgomery::sub(&montgomery::add(s_p, &self.two_p), s_q);
        let p = &self.primes.p.modulus;
        let h = p.reduce(&p.mul(&difference, &self.q_inv_r));
        let mut s_q_wide = [0u32; N_LIMBS];
        s_q_wide[..P_LIMBS].copy_from_slice(s_q);
        montgomery::add(&montgomery::mul_wide::<P_LIMBS, N_LIMBS>(&h, &self.q_limbs), &s_q_wide)
    }

    /// RSASSA-PKCS1-v1_5 with SHA-256 (RFC 8017 section 8.2.1): the 256-byte signature of `message`.
    ///
    /// Everything runs on the residues mod p and q: blinding, both exponentiations at once, unblinding, then
    /// Garner's recombination, and the check s^e = m mod p and mod q (the same as mod n, by the CRT).
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        let primes = &self.primes;
        let em = encode_pkcs1v15_sha256(message);
        let m: Limbs<N_LIMBS> = montgomery::from_be_bytes(&em).ok_or(KeyError::Sign(KeyType::Rsa))?;
        let (r_pow_e, r_inv) = {
            let mut blinding = self.blinding.lock().map_err(|_| KeyError::Sign(KeyType::Rsa))?;
            if blinding.uses >= self.refresh_every {
                self.refresh(&mut blinding)?;
            }
            let current = (blinding.r_pow_e, blinding.r_inv);
            // (r^2)^e and (r^2)^-1: squaring keeps the pair consistent and Montgomery form intact.
            blinding.r_pow_e = primes.square(&blinding.r_pow_e);
            blinding.r_inv = primes.square(&blinding.r_inv);
            blinding.uses += 1;
            current
        };
        // Blind: (m R) (r^e R) R^-1 = m r^e R per prime.
        let c = primes.mul(&primes.montgomery_form(&m), &r_pow_e);
        // (m r^e)^d = m^d r (mod p: e d_p = 1 mod p - 1), and the same mod q; unblind with r^-1.
        let s = primes.mul(&primes.pow(&c, &primes.p.exponent, &primes.q.exponent), &r_inv);
        let (s_p, s_q) = primes.canonical(&s);
        let s = self.recombine(&s_p, &s_q);
        // Verify before release: s^e must give back m, mod p and mod q, from the recombined s and from residues
        // of m computed anew (a fault in the residues used for blinding must not slip through the check).
        let check = primes.pow_public(&primes.montgomery_form(&s), &self.e_bytes, self.e.bit_width() as usize);
        if primes.canonical(&check) != primes.canonical(&primes.montgomery_form(&m)) {
            return Err(KeyError::Sign(KeyType::Rsa));
        }
        Ok(montgomery::to_be_bytes(&s, MODULUS_BYTES))
    }
}

/// EMSA-PKCS1-v1_5 encoding of SHA-256(message) for a 2048-bit modulus.
fn encode_pkcs1v15_sha256(message: &[u8]) -> [u8; MODULUS_BYTES] {
    let mut em = [0xffu8; MODULUS_BYTES];
    em[0] = 0x00;
    em[1] = 0x01;
    let tail = SHA256_DIGEST_INFO.len() + 32;
    em[MODULUS_BYTES - tail - 1] = 0x00;
    em[MODULUS_BYTES - tail..MODULUS_BYTES - 32].copy_from_slice(&SHA256_DIGEST_INFO);
    em[MODULUS_BYTES - 32..].copy_from_slice(&Sha256::digest(message));
    em
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::rsa::pkcs1v15::SigningKey;
    use ::rsa::signature::{SignatureEncoding, Signer};

    #[test]
    fn signatures_equal_the_rsa_crates_across_blinding_refreshes() {
        // PKCS#1 v1.5 signatures are deterministic: the fast signer must produce the same bytes.
        // Both exponentiation kernels (the paired one through its portable lanes when not on wasm SIMD); one
        // key at the real refresh interval, one refreshing every 2 signatures (through three batches of spares).
        for (paired, refresh_every) in [
            (false, BLINDING_REFRESH),
            (true, BLINDING_REFRESH),
            (true, 2),
            (false, 2),
        ] {
            let key = rsa::PrivateKey::new(&mut getrandom::SysRng, 2048).unwrap();
            let mut fast = RsaCrt2048::new(&key).expect("2048-bit key");
            fast.primes.paired = paired;
            fast.refresh_every = refresh_every;
            let reference = SigningKey::<Sha256>::new(key);
            let count = if refresh_every == 2 {
                2 * 2 * BLINDING_BATCH as u32 + 5
            } else {
                BLINDING_REFRESH + 5
            };
            for i in 0..count {
                let message = format!("header.payload-{i}");
                let want = reference.sign(message.as_bytes()).to_vec();
                assert_eq!(
                    fast.sign(message.as_bytes()).unwrap(),
                    want,
                    "message {i}, paired {paired}, refresh every {refresh_every}"
                );
            }
            let blinding = fast.blinding.lock().unwrap();
            assert!(blinding.uses >= 1 && blinding.spare.len() < BLINDING_BATCH);
        }
    }

    #[test]
    fn other_key_sizes_are_not_handled() {
        let key = rsa::PrivateKey::new(&mut getrandom::SysRng, 3072).unwrap();
        assert!(RsaCrt2048::new(&key).is_none());
    }

    #[test]
    fn encoding_matches_rfc8017() {
        let em = encode_pkcs1v15_sha256(b"abc");
        assert_eq!(&em[..3], &[0, 1, 0xff]);
        assert_eq!(em[MODULUS_BYTES - 52], 0);
        assert_eq!(&em[MODULUS_BYTES - 51..MODULUS_BYTES - 32], &SHA256_DIGEST_INFO);
    }
}
