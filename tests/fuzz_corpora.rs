//! Replays every fuzz corpus (`fuzz/corpus/<target>.tar.gz`, one archive per target) and every
//! saved finding (`fuzz/regressions/<target>/`) through the same functions the fuzz targets call,
//! so that CI keeps them honest without libFuzzer: an input that once crashed the gateway, or that
//! the fuzzer found interesting, must still be handled. The corpora are archives so that git
//! tracks a dozen files instead of some 23,000; `fuzz/run.sh` unpacks a target's archive before it
//! runs and packs the minimized corpus again after. See docs/security.md, "Fuzzing".

use std::path::{Path, PathBuf};
use std::process::Command;

/// The files of `target`'s corpus archive, unpacked under a fresh temporary directory.
fn unpack(archive: &Path, target: &str) -> Vec<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "horizon-corpus-{target}-{}-{}",
        std::process::id(),
        horizon::ids::random_hex(4)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let status = Command::new("tar")
        .arg("-xzf")
        .arg(archive)
        .arg("-C")
        .arg(&dir)
        .status()
        .expect("tar runs (every Linux has it)");
    assert!(status.success(), "tar -xzf {} failed", archive.display());
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_fuzz_corpus_replays_without_a_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let started = std::time::Instant::now();
    let mut total = 0;
    for (name, target) in horizon::fuzzing::TARGETS {
        assert!(
            root.join("fuzz_targets")
                .join(format!("{name}.rs"))
                .is_file(),
            "fuzz target {name} has its file"
        );
        let archive = root.join("corpus").join(format!("{name}.tar.gz"));
        assert!(archive.is_file(), "{} is missing", archive.display());
        let mut inputs = unpack(&archive, name);
        if let Ok(entries) = std::fs::read_dir(root.join("regressions").join(name)) {
            inputs.extend(entries.map(|e| e.expect("a regression").path()));
        }
        for path in &inputs {
            let data = std::fs::read(path).expect("a corpus file");
            let outcome = std::panic::catch_unwind(|| target(&data));
            assert!(outcome.is_ok(), "{name}: {} panics", path.display());
        }
        assert!(!inputs.is_empty(), "the corpus of {name} is empty");
        if let Some(dir) = inputs.first().and_then(|p| p.parent()) {
            if dir.starts_with(std::env::temp_dir()) {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
        total += inputs.len();
    }
    eprintln!(
        "replayed {total} fuzz inputs in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
