//! `rsa-micro [signatures] [squarings]`: times the filter's RS256 signer (src/crypto/rsa/crt.rs) and the 1024-bit
//! Montgomery squaring it spends most of its time in. A fresh 2048-bit key per run (no key is stored).
//!
//! `rsa-micro check [keys]`: for each of `keys` fresh keys, 100 signatures (three blinding refreshes) must equal
//! the `rsa` crate's PKCS#1 v1.5 signatures byte for byte; prints `check ok` or exits 1. Run it in wasm to test
//! the SIMD kernel (native `cargo test` runs the portable one).
//!
//! Prints one line per measurement: `sign_us median=.. min=.. mean=..` and `square37_ns per=..`.
//! Native builds run under `valgrind --tool=callgrind` for a repeatable instruction count; the wasm32-wasip1
//! build runs in node's WASI (bench/rsa-micro/run-node.mjs) for ratios only (node's V8 is 2-3x slower than Envoy's).

use std::time::Instant;

use mcp_jwt_signer::crypto::rsa::crt::RsaCrt2048;
use mcp_jwt_signer::crypto::rsa::montgomery::{self, Limbs, Modulus};
use rsa::pkcs1v15::SigningKey;
use rsa::signature::{SignatureEncoding, Signer};

fn main() {
    if std::env::args().nth(1).as_deref() == Some("check") {
        let keys = std::env::args().nth(2).and_then(|a| a.parse().ok()).unwrap_or(3);
        check(keys);
        return;
    }
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let signatures = args.first().copied().unwrap_or(200);
    let squarings = args.get(1).copied().unwrap_or(20000);

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
            "sign_us median={:.1} min={:.1} mean={:.1} p99={:.1} max={:.1} n={}",
            times[times.len() / 2],
            times[0],
            mean,
            times[times.len() * 99 / 100],
            times[times.len() - 1],
            signatures
        );
    }

    if squarings > 0 {
        // A 1022-bit odd modulus (like an RSA-2048 prime) in 37 limbs.
        let mut mb = [0u8; 128];
        getrandom::fill(&mut mb).expect("random");
        mb[0] = (mb[0] & 0x3f) | 0x20;
        mb[127] |= 1;
        let m: Limbs<37> = montgomery::from_be_bytes(&mb).expect("fits");
        let modulus = Modulus::new(m);
        let mut x: Limbs<37> = montgomery::from_be_bytes(&mb[1..]).expect("fits");
        // Batches in their own (not inlined) functions: V8 tiers a wasm function up to its optimising compiler
        // only between calls (no on-stack replacement), so a loop inside main() would stay in baseline code.
        let batches = squarings.div_ceil(BATCH);
        for _ in 0..batches.min(20) {
            x = square_batch(&modulus, x);
            x = mul_batch(&modulus, x);
        }
        let t = Instant::now();
        for _ in 0..batches {
            x = square_batch(&modulus, x);
        }
        let sq = t.elapsed().as_secs_f64() * 1e9 / (batches * BATCH) as f64;
        let t = Instant::now();
        for _ in 0..batches {
            x = mul_batch(&modulus, x);
        }
        let mu = t.elapsed().as_secs_f64() * 1e9 / (batches * BATCH) as f64;
        println!("square37_ns per={sq:.0}");
        println!("mul37_ns per={mu:.0}");
        sink ^= x[0] as u8;
    }
    println!("sink {sink}");
}

const BATCH: usize = 100;

#[inline(never)]
fn square_batch(modulus: &Modulus<37>, mut x: Limbs<37>) -> Limbs<37> {
    for _ in 0..BATCH {
        x = modulus.square(&x);
    }
    x
}

#[inline(never)]
fn mul_batch(modulus: &Modulus<37>, mut x: Limbs<37>) -> Limbs<37> {
    let y = x;
    for _ in 0..BATCH {
        x = modulus.mul(&x, &y);
    }
    x
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
