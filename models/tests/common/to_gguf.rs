//! The test suites' GGUF files: their dummy models written by the library's writer
//! (`lantern_models::dummy::gguf`), weights only (the suites read tokenizer.json beside them).

use super::TestResult;
use candle_core::quantized::GgmlDType;
use lantern_models::dummy::gguf::GgufTokenizer;
use std::path::Path;

/// Writes the model in `dir` to `out`, its matrices in `matrices`, with `extra` f32 tensors.
pub fn write_gguf(
    dir: &Path,
    out: &Path,
    matrices: GgmlDType,
    extra: &[(&str, Vec<f32>)],
) -> TestResult {
    lantern_models::dummy::gguf::write_gguf(dir, out, matrices, extra, GgufTokenizer::None)?;
    Ok(())
}
