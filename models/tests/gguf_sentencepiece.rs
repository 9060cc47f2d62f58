//! Sentencepiece vocabularies in GGUF files (`tokenizer.ggml.model = llama`), in the three
//! shapes transformers builds from them (Llama, Gemma, Phi-3): our tokenizer gives the ids and
//! the decoded text transformers gives for the same file, on text with leading and repeated
//! spaces, digits, emoji, CJK, code, characters only byte fallback can spell, and user-defined
//! and control tokens, with and without the BOS the file asks for (`goldens/make_spm_goldens.py`).

mod common;

use candle_core::quantized::gguf_file::Content;
use common::{golden_path, TestResult};

#[derive(serde::Deserialize)]
struct Golden {
    file: String,
    text: String,
    ids: Vec<u32>,
    with_special_tokens: Vec<u32>,
    decoded: String,
}

#[test]
fn sentencepiece_gguf_tokenizers_match_transformers() -> TestResult {
    let goldens: Vec<Golden> = serde_json::from_str(&std::fs::read_to_string(golden_path(
        "spm_tokenizers.json",
    ))?)?;
    assert_eq!(goldens.len(), 30, "three files, ten samples each");
    for golden in goldens {
        let path = golden_path(&format!("spm/{}", golden.file));
        let mut file = std::fs::File::open(&path)?;
        let content = Content::read(&mut file)?;
        let bundle = lantern_models::config::gguf::tokenizer(&content, &path)?;
        let encoding = bundle.tokenizer.encode(golden.text.as_str(), false)?;
        assert_eq!(
            encoding.get_ids(),
            golden.ids.as_slice(),
            "{}: {:?}",
            golden.file,
            golden.text
        );
        let with_bos = bundle.tokenizer.encode(golden.text.as_str(), true)?;
        assert_eq!(
            with_bos.get_ids(),
            golden.with_special_tokens.as_slice(),
            "{} with special tokens: {:?}",
            golden.file,
            golden.text
        );
        let decoded = bundle.tokenizer.decode(&golden.ids, false)?;
        assert_eq!(
            decoded, golden.decoded,
            "{}: {:?}",
            golden.file, golden.text
        );
    }
    Ok(())
}
