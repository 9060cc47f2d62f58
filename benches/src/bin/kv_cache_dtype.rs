//! How far a half-precision KV cache moves a real model's logits: one 200-token prefill with
//! every row's logits, KV cache in f32, f16 and bf16, the largest difference from f32.
//!
//!     cargo run --release -p lantern-benches --bin kv_cache_dtype -- MODEL_DIR_OR_GGUF

use lantern_models::{load, KvDtype, LoadOptions, LogitsWanted, ModelSource, SequenceStep};
fn main() -> anyhow::Result<()> {
    let path = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: kv_cache_dtype MODEL_DIR_OR_GGUF"))?;
    let mut rows = Vec::new();
    for dtype in [KvDtype::F32, KvDtype::F16, KvDtype::Bf16] {
        let mut model = load(&ModelSource::resolve(&path, None)?, &LoadOptions::cpu())?;
        let d = &mut model.decoder;
        d.set_kv_cache_dtype(dtype)?;
        d.allocate_cache(64, 16)?;
        let tokens: Vec<u32> = (0..200).map(|i| 100 + (i * 37) % 5000).collect();
        let logits = d.forward(&[SequenceStep {
            tokens,
            context_before: 0,
            block_table: (0..16).collect(),
            logits: LogitsWanted::All,
            adapter: None,
        }])?;
        rows.push(logits.to_vec2::<f32>()?);
    }
    for (name, r) in [("f16", &rows[1]), ("bf16", &rows[2])] {
        let mut worst = 0f32;
        let mut at = 0;
        for (i, (a, b)) in rows[0].iter().zip(r.iter()).enumerate() {
            for (x, y) in a.iter().zip(b) {
                if (x - y).abs() > worst {
                    worst = (x - y).abs();
                    at = i;
                }
            }
        }
        println!("{name}: max logit diff {worst} at row {at}");
    }
    Ok(())
}
