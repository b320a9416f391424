//! `cipher-bench MIB RUNS`: seals MIB MiB in 16 KiB records (a TLS record's payload) with each
//! AEAD a TLS 1.3 suite uses, RUNS times each, and prints the median and range of the seconds
//! per GiB. First line: what the daemon's rule (src/upload/tls.rs `aes_gcm_is_fast`) decides here.

use std::time::Instant;

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};

const RECORD: usize = 16 * 1024;

/// The daemon's rule, copied (src/upload/tls.rs `aes_gcm_is_fast`): AES-GCM on AES
/// instructions on x86 and aarch64; never on 32-bit ARM (ring has no hardware AES code there).
fn aes_gcm_is_fast() -> bool {
    #[cfg(any(target_arch = "x86_64", target_arch = "x86"))]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
            && std::arch::is_aarch64_feature_detected!("pmull")
    }
    #[cfg(target_arch = "arm")]
    {
        false
    }
}

/// Whether the core has AES and PMULL instructions at all (32-bit ARM: AT_HWCAP2 bits 0, 1).
fn core_has_aes() -> Option<bool> {
    #[cfg(target_arch = "arm")]
    {
        // SAFETY: reads the auxiliary vector.
        let hwcap2 = unsafe { libc::getauxval(libc::AT_HWCAP2) } as u64;
        Some(hwcap2 & 3 == 3)
    }
    #[cfg(not(target_arch = "arm"))]
    {
        None
    }
}

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap())
        .collect();
    let (mib, runs) = (
        args.first().copied().unwrap_or(1024),
        args.get(1).copied().unwrap_or(3),
    );
    let fast = aes_gcm_is_fast();
    let core = core_has_aes().map_or(String::new(), |h| format!("AT_HWCAP2 AES+PMULL={h}; "));
    println!(
        "{core}aes_gcm_is_fast={fast} (the daemon lists {} first)",
        if fast { "AES-GCM" } else { "ChaCha20-Poly1305" }
    );
    let records = mib * 1024 * 1024 / RECORD as u64;
    let mut buf = vec![0x5au8; RECORD];
    for (name, alg) in [
        ("TLS13_AES_128_GCM_SHA256", &aead::AES_128_GCM),
        ("TLS13_AES_256_GCM_SHA384", &aead::AES_256_GCM),
        ("TLS13_CHACHA20_POLY1305_SHA256", &aead::CHACHA20_POLY1305),
    ] {
        let key = LessSafeKey::new(UnboundKey::new(alg, &vec![7u8; alg.key_len()]).unwrap());
        let mut secs = Vec::new();
        for _ in 0..runs {
            let t = Instant::now();
            for i in 0..records {
                let mut n = [0u8; 12];
                n[4..].copy_from_slice(&i.to_be_bytes());
                let tag = key
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key(n),
                        Aad::from([23u8, 3, 3, 64, 17]),
                        &mut buf,
                    )
                    .unwrap();
                let _ = std::hint::black_box(tag);
            }
            secs.push(t.elapsed().as_secs_f64() * 1024.0 / mib as f64);
        }
        secs.sort_by(f64::total_cmp);
        println!(
            "{name:32} {:7.3} s/GiB ({:.3}-{:.3}), {:7.1} MiB/s",
            secs[secs.len() / 2],
            secs[0],
            secs[secs.len() - 1],
            1024.0 / secs[secs.len() / 2]
        );
    }
}
