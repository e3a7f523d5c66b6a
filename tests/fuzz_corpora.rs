//! Replays every fuzz corpus (`fuzz/corpus/<target>/`) and every saved finding
//! (`fuzz/regressions/<target>/`) through the same functions the fuzz targets call, so that CI
//! keeps them honest without libFuzzer: an input that once crashed the gateway, or that the
//! fuzzer found interesting, must still be handled. See README "Fuzzing".

use std::path::Path;

#[test]
fn every_fuzz_corpus_replays_without_a_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut total = 0;
    for (name, target) in horizon::fuzzing::TARGETS {
        assert!(
            root.join("fuzz_targets")
                .join(format!("{name}.rs"))
                .is_file(),
            "fuzz target {name} has its file"
        );
        let mut inputs = 0;
        for folder in ["corpus", "regressions"] {
            let Ok(entries) = std::fs::read_dir(root.join(folder).join(name)) else {
                continue;
            };
            for entry in entries {
                let path = entry.expect("a corpus entry").path();
                let data = std::fs::read(&path).expect("a corpus file");
                let outcome = std::panic::catch_unwind(|| target(&data));
                assert!(outcome.is_ok(), "{name}: {} panics", path.display());
                inputs += 1;
            }
        }
        assert!(inputs > 0, "the corpus of {name} is empty");
        total += inputs;
    }
    eprintln!("replayed {total} fuzz inputs");
}
