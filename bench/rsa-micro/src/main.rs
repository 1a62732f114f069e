//! Micro-benchmark and wasm cross-check of the filter's RS256 signer (src/crypto/rsa).
//!
//! - `rsa-micro sign [n]`: n signatures with a fresh 2048-bit key (none is stored): `sign_us median=.. min=..`.
//! - `rsa-micro ops [batches] [op]`: the Montgomery operations on random moduli (no key generation), fastest
//!   batch of 100 each (on a shared machine the minimum is the repeatable number); `op` runs only that one
//!   (`square37`, `mul37`, `paired_square`, `paired_mul`, `square74`, `paired_pow`), e.g. under valgrind.
//! - `rsa-micro check [keys]`: for each of `keys` fresh keys, 100 signatures (three blinding refreshes) must
//!   equal the `rsa` crate's PKCS#1 v1.5 signatures byte for byte; prints `check ok` or exits 1. Run it in wasm
//!   to test the SIMD kernel (native `cargo test` runs the portable one).
//!
//! The wasm32-wasip1 build runs under node or deno with bench/rsa-micro/run-wasm.mjs, for ratios between builds
//! (each engine's V8 differs from Envoy's). Instruction counts: `valgrind --tool=callgrind` on the native build,
//! or on node running the wasm build (`ops B op` minus `ops 0 op`).

use std::time::Instant;

use mcp_jwt_signer::crypto::rsa::crt::RsaCrt2048;
use mcp_jwt_signer::crypto::rsa::montgomery::{self, Limbs, Modulus};
use mcp_jwt_signer::crypto::rsa::paired::{self, Pair, PairedModulus};
use rsa::pkcs1v15::SigningKey;
use rsa::signature::{SignatureEncoding, Signer};

const BATCH: usize = 100;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize, default: usize| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    match args.first().map(String::as_str) {
        Some("check") => check(num(1, 3)),
        Some("sign") => sign(num(1, 200)),
        Some("ops") => ops(num(1, 200), args.get(2).map(String::as_str)),
        _ => {
            eprintln!("usage: rsa-micro sign [n] | ops [batches] [op] | check [keys]");
            std::process::exit(2);
        }
    }
}

fn sign(signatures: usize) {
    let key = rsa::PrivateKey::new(&mut getrandom::SysRng, 2048).expect("key");
    let signer = RsaCrt2048::new(&key).expect("2048-bit key");
    let mut times = Vec::with_capacity(signatures);
    let mut sink = 0u8;
    for i in 0..signatures {
        let message = format!("header.payload-{i}");
        let t = Instant::now();
        let sig = signer.sign(message.as_bytes()).expect("sign");
        times.push(t.elapsed().as_secs_f64() * 1e6);
        sink ^= sig[0];
    }
    if signatures > 0 {
        let mean = times.iter().sum::<f64>() / times.len() as f64;
        times.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!(
            "sign_us median={:.1} min={:.1} mean={:.1} p99={:.1} max={:.1} n={} (sink {sink})",
            times[times.len() / 2],
            times[0],
            mean,
            times[times.len() * 99 / 100],
            times[times.len() - 1],
            signatures
        );
    }
}

fn random_odd<const N: usize>(bytes: usize) -> Limbs<N> {
    let mut mb = vec![0u8; bytes];
    getrandom::fill(&mut mb).expect("random");
    mb[0] = (mb[0] & 0x3f) | 0x20;
    mb[bytes - 1] |= 1;
    montgomery::from_be_bytes(&mb).expect("fits")
}

/// Runs `f` `batches` times after a warm-up (V8 tiers a wasm function up only between calls: each batch is its own
/// call) and prints the fastest batch per operation.
fn time<T: Copy>(name: &str, only: Option<&str>, batches: usize, mut x: T, f: fn(T) -> T) -> T {
    if only.is_some_and(|o| o != name) {
        return x;
    }
    for _ in 0..batches.min(20) {
        x = f(x);
    }
    let mut best = f64::MAX;
    for _ in 0..batches {
        let t = Instant::now();
        x = f(x);
        best = best.min(t.elapsed().as_secs_f64() * 1e9 / BATCH as f64);
    }
    if batches > 0 {
        println!("{name}_ns per={best:.0}");
    }
    x
}

fn ops(batches: usize, only: Option<&str>) {
    let m: Limbs<37> = random_odd(128);
    let m2: Limbs<37> = random_odd(128);
    let n: Limbs<74> = random_odd(256);
    let mut sink = 0u32;
    // Moduli and operands live in statics so that each batch is a plain fn: (modulus, value) pairs.
    let p = Box::leak(Box::new(Modulus::new(m)));
    let pair = Box::leak(Box::new(PairedModulus::<37, 80>::new(&m, &m2)));
    let big = Box::leak(Box::new(Modulus::new(n)));
    let x: Limbs<37> = random_odd(127);
    let z: Pair<80> = paired::interleave(&x, &x);
    let w: Limbs<74> = random_odd(255);
    let exps = Box::leak(Box::new((random_odd::<37>(128), random_odd::<37>(128))));
    let exp_p = Box::leak(montgomery::to_be_bytes(&exps.0, 128).into_boxed_slice());
    let exp_q = Box::leak(montgomery::to_be_bytes(&exps.1, 128).into_boxed_slice());
    STATE.with(|s| {
        *s.borrow_mut() = Some(State {
            p,
            pair,
            big,
            exp_p,
            exp_q,
        })
    });
    sink ^= time("square37", only, batches, x, |x| with(|s| batch(x, |v| s.p.square(v))))[0];
    sink ^= time("mul37", only, batches, x, |x| with(|s| batch(x, |v| s.p.mul(v, &x))))[0];
    sink ^= time("paired_square", only, batches, z, |z| {
        with(|s| batch(z, |v| s.pair.square(v)))
    })[3];
    sink ^= time("paired_mul", only, batches, z, |z| {
        with(|s| batch(z, |v| s.pair.mul(v, &z)))
    })[3];
    sink ^= time("square74", only, batches, w, |w| {
        with(|s| batch(w, |v| s.big.square(v)))
    })[3];
    // Bare kernels: `dot` over 18 limb pairs and `dot2` over 18, 100 calls per batch (ns per call).
    let xs: Pair<80> = paired::interleave(&x, &m2);
    sink ^= time("dot18", only, batches, xs, |v| {
        batch(v, |v| {
            let mut out = *v;
            let s = paired::dot(v, 4, v, 2, 18);
            out[0] ^= unsafe_lane(s);
            out
        })
    })[0];
    sink ^= time("dot2_18", only, batches, xs, |v| {
        batch(v, |v| {
            let mut out = *v;
            let s = paired::dot2(v, v, v, v, 4, 2, 18);
            out[0] ^= unsafe_lane(s);
            out
        })
    })[0];
    // One whole paired exponentiation (1024-bit exponents) per call, timed per call (not per 100).
    if only.is_none_or(|o| o == "paired_pow") && batches > 0 {
        let one = z;
        let mut best = f64::MAX;
        let mut acc = z;
        for _ in 0..(batches / 10).max(3) {
            let t = Instant::now();
            acc = with(|s| pow_once(s, &acc, &one));
            best = best.min(t.elapsed().as_secs_f64() * 1e6);
        }
        println!("paired_pow_us per={best:.0}");
        sink ^= acc[3];
    }
    println!("(sink {sink})");
}

struct State {
    p: &'static Modulus<37>,
    pair: &'static PairedModulus<37, 80>,
    big: &'static Modulus<74>,
    exp_p: &'static [u8],
    exp_q: &'static [u8],
}

thread_local! {
    static STATE: std::cell::RefCell<Option<State>> = const { std::cell::RefCell::new(None) };
}

fn with<T>(f: impl FnOnce(&State) -> T) -> T {
    STATE.with(|s| f(s.borrow().as_ref().expect("state")))
}

/// BATCH chained operations (each result feeds the next), in a function of its own.
#[inline(never)]
fn batch<T: Copy>(mut x: T, step: impl Fn(&T) -> T) -> T {
    for _ in 0..BATCH {
        x = step(&x);
    }
    x
}

#[inline(never)]
fn pow_once(s: &State, base: &Pair<80>, one: &Pair<80>) -> Pair<80> {
    s.pair.pow(base, s.exp_p, s.exp_q, 1024, one)
}

fn check(keys: usize) {
    for k in 0..keys {
        let key = rsa::PrivateKey::new(&mut getrandom::SysRng, 2048).expect("key");
        let fast = RsaCrt2048::new(&key).expect("2048-bit key");
        let reference = SigningKey::<rsa::sha2::Sha256>::new(key);
        for i in 0..100 {
            let message = format!("header.payload-{k}-{i}");
            let want = reference.sign(message.as_bytes()).to_vec();
            if fast.sign(message.as_bytes()).expect("sign") != want {
                println!("check FAILED: key {k}, message {i}");
                std::process::exit(1);
            }
        }
    }
    println!("check ok: {keys} keys x 100 signatures equal the rsa crate's");
}

/// A mix of all four 32-bit lanes of a vector (so that no lane's work can be optimised away).
fn unsafe_lane<T: Copy>(v: T) -> u32 {
    let mut out = [0u32; 4];
    let n = std::mem::size_of::<T>().min(16);
    // SAFETY: copies n <= 16 bytes of a plain vector value into a 16-byte buffer.
    unsafe { std::ptr::copy_nonoverlapping((&v as *const T).cast::<u8>(), out.as_mut_ptr().cast::<u8>(), n) };
    out[0] ^ out[1].rotate_left(7) ^ out[2].rotate_left(13) ^ out[3].rotate_left(19)
}
