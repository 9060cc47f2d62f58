//! `lantern dummy-model` writes the same bytes for the same seed, other bytes for another.

use lantern_tests::dummy_model;
use std::path::Path;

const FILES: [&str; 5] = [
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
];

fn read(dir: &Path, file: &str) -> Vec<u8> {
    std::fs::read(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

#[test]
fn same_seed_same_bytes_other_seed_other_weights() {
    let root = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    for arch in [
        "llama",
        "mistral",
        "qwen2",
        "qwen3",
        "phi3",
        "gemma2",
        "gemma3_text",
    ] {
        let (a, b, c) = (
            root.path().join(format!("{arch}-a")),
            root.path().join(format!("{arch}-b")),
            root.path().join(format!("{arch}-c")),
        );
        dummy_model(arch, 11, &a);
        dummy_model(arch, 11, &b);
        dummy_model(arch, 12, &c);
        for file in FILES {
            assert_eq!(
                read(&a, file),
                read(&b, file),
                "{arch}: {file} differs between two runs with seed 11"
            );
        }
        assert_ne!(
            read(&a, "model.safetensors"),
            read(&c, "model.safetensors"),
            "{arch}: seeds 11 and 12 gave the same weights"
        );
        // The tokenizer is trained on the corpus, not seeded: it is the same for every seed.
        assert_eq!(read(&a, "tokenizer.json"), read(&c, "tokenizer.json"));
    }
}
