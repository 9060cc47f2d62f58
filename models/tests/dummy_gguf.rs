//! `lantern dummy-model --format gguf`: the dummy model as one GGUF file in llama.cpp's layout
//! with its tokenizer in the metadata. Loaded by Lantern from the file alone, it tokenizes,
//! decodes and templates as the Hugging Face directory does, and its f16 weights give the
//! directory's logits within f16 rounding; a tokenizer copied from another GGUF file must
//! match the model's vocabulary.

mod common;

use common::scenarios::prefill_then_decode;
use common::{max_abs_diff, TestResult};
use lantern_models::chat::ChatMessage;
use lantern_models::dummy::gguf::GgufTokenizer;
use lantern_models::dummy::{write_dummy_gguf, write_dummy_model, DummySize, DummySpec};
use lantern_models::{load, Architecture, LoadOptions, ModelSource};

const SAMPLES: [&str; 4] = [
    "Hello world, the river runs past the mill.",
    "<|im_start|>user\nWhat is 12 + 30?<|im_end|>\n<|im_start|>assistant\n",
    "  spaces\tand\ttabs, ünïcödé and emoji 🦀",
    "",
];

#[test]
fn a_dummy_gguf_reads_as_its_directory() -> TestResult {
    let dir = tempfile::tempdir()?;
    let spec = DummySpec {
        architecture: Architecture::Llama,
        size: DummySize::Tiny,
        seed: 5,
    };
    let hf = dir.path().join("hf");
    write_dummy_model(spec, &hf)?;
    let gguf = dir.path().join("model.gguf");
    write_dummy_gguf(spec, &gguf, GgufTokenizer::FromDirectory)?;
    assert!(
        !dir.path().join("model.safetensors.tmp").exists(),
        "staging left behind"
    );

    let mut from_dir = load(&ModelSource::Directory(hf), &LoadOptions::cpu())?;
    let mut from_gguf = load(&ModelSource::Gguf(gguf.clone()), &LoadOptions::cpu())?;
    let (a, b) = (&from_dir.tokenizer, &from_gguf.tokenizer);
    for text in SAMPLES {
        let ids_a = a.tokenizer.encode(text, true)?.get_ids().to_vec();
        let ids_b = b.tokenizer.encode(text, true)?.get_ids().to_vec();
        assert_eq!(ids_a, ids_b, "{text:?}");
        assert_eq!(
            a.tokenizer.decode(&ids_a, false)?,
            b.tokenizer.decode(&ids_b, false)?
        );
    }
    let sorted = |ids: &[u32]| {
        let mut ids = ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        ids
    };
    assert_eq!(sorted(&a.eos_token_ids), sorted(&b.eos_token_ids));
    let messages = [ChatMessage::new("user", "hi")];
    let rendered = |bundle: &lantern_models::TokenizerBundle| -> TestResult<String> {
        let template = bundle.chat_template.as_ref().ok_or("no chat template")?;
        Ok(template.render(&messages, true)?)
    };
    assert_eq!(rendered(a)?, rendered(b)?, "chat templates differ");

    // f16 matrices: the directory's logits within f16 rounding (a tensor read wrong moves
    // them by their own size, 3 to 30 here).
    let tokens: Vec<u32> = a.tokenizer.encode(SAMPLES[0], true)?.get_ids().to_vec();
    let expected = prefill_then_decode(&mut from_dir.decoder, &tokens, 8, 4)?;
    let got = prefill_then_decode(&mut from_gguf.decoder, &tokens, 8, 4)?;
    let diff = max_abs_diff(&got, &expected)?;
    assert!(diff < 0.05, "max logit difference {diff}");

    // A tokenizer copied from a GGUF of the same vocabulary; one of another size is refused.
    let copied = dir.path().join("copied.gguf");
    write_dummy_gguf(spec, &copied, GgufTokenizer::FromGguf(&gguf))?;
    let copied = load(&ModelSource::Gguf(copied), &LoadOptions::cpu())?;
    let ids = |bundle: &lantern_models::TokenizerBundle| -> TestResult<Vec<u32>> {
        Ok(bundle
            .tokenizer
            .encode(SAMPLES[1], true)?
            .get_ids()
            .to_vec())
    };
    assert_eq!(ids(&copied.tokenizer)?, ids(b)?);
    let wide = DummySpec {
        size: DummySize::Small,
        ..spec
    };
    let refused = write_dummy_gguf(
        wide,
        &dir.path().join("wide.gguf"),
        GgufTokenizer::FromGguf(&gguf),
    );
    let message = refused.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(message.contains("512 tokens, the model 49152"), "{message}");
    Ok(())
}
