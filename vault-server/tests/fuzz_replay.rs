//! The fuzz targets on stable, within the suite: every input in `fuzz/corpus/<target>` (the
//! seeds and every crash ever found, kept as regressions), then generated inputs: random bytes
//! and corpus inputs with random bytes flipped, inserted and cut. A broken invariant panics.
//! `fuzz/run.sh` runs the same targets under libFuzzer for longer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use vault_server::fuzzing::TARGETS;

/// Generated inputs per target; the whole replay takes a few seconds in a debug build.
const GENERATED: usize = 3000;

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target);
    let mut inputs: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let path = e.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect();
    inputs.sort();
    inputs.into_iter().map(|(_, b)| b).collect()
}

/// xorshift64*: deterministic, so a failure here reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % u64::try_from(n.max(1)).unwrap()).unwrap()
    }

    fn byte(&mut self) -> u8 {
        self.next().to_le_bytes()[0]
    }

    /// A seed with a few random edits, or fresh random bytes.
    fn input(&mut self, seeds: &[Vec<u8>]) -> Vec<u8> {
        if seeds.is_empty() || self.below(4) == 0 {
            return (0..self.below(200)).map(|_| self.byte()).collect();
        }
        let mut v = seeds[self.below(seeds.len())].clone();
        for _ in 0..=self.below(4) {
            match self.below(3) {
                0 if !v.is_empty() => {
                    let i = self.below(v.len());
                    v[i] = self.byte();
                }
                1 => {
                    let i = self.below(v.len() + 1);
                    v.insert(i, self.byte());
                }
                _ if !v.is_empty() => {
                    let i = self.below(v.len());
                    v.truncate(i);
                }
                _ => {}
            }
        }
        v
    }
}

#[test]
fn every_fuzz_target_has_a_libfuzzer_entry_and_seeds() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    for (name, _) in TARGETS {
        let entry = std::fs::read_to_string(root.join(format!("fuzz_targets/{name}.rs"))).unwrap();
        assert!(entry.contains(&format!("vault_server::fuzzing::{name}(data)")), "{name}: wrong entry point");
        assert!(manifest.contains(&format!("name = \"{name}\"")), "{name}: not in fuzz/Cargo.toml");
        assert!(!corpus(name).is_empty(), "{name}: no seeds in fuzz/corpus");
    }
}

#[test]
fn the_corpus_and_generated_inputs_break_no_invariant() {
    for (i, (name, target)) in TARGETS.into_iter().enumerate() {
        let seeds = corpus(name);
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (i as u64 + 1));
        let generated: Vec<Vec<u8>> = (0..GENERATED).map(|_| rng.input(&seeds)).collect();
        for input in seeds.iter().chain(&generated) {
            // The input goes into the failure message so that it can become a seed.
            let held = std::panic::catch_unwind(|| target(input)).is_ok();
            assert!(held, "{name} broke an invariant on input {input:02x?}");
        }
    }
}
