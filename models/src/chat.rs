//! Chat templates: the Jinja template a model ships (in `tokenizer_config.json`,
//! `chat_template.jinja` or GGUF `tokenizer.chat_template`) rendered with minijinja, with the
//! Python string methods and `raise_exception` that Hugging Face templates rely on.

use crate::error::{ModelError, Result};
use minijinja::{context, Environment, ErrorKind};
use serde::Serialize;

/// One turn of a conversation as templates expect it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: &str, content: &str) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

const TEMPLATE_NAME: &str = "chat";

impl ChatTemplate {
    /// Parses `source`; a template that does not compile is refused here, at load, not per request.
    pub fn new(source: String, bos_token: String, eos_token: String) -> Result<Self> {
        let mut env = Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        env.add_template_owned(TEMPLATE_NAME, source)
            .map_err(|e| ModelError::ChatTemplate(format!("does not compile: {e}")))?;
        Ok(Self {
            env,
            bos_token,
            eos_token,
        })
    }

    /// Renders `messages`; with `add_generation_prompt` the text ends where the assistant's
    /// answer begins.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| ModelError::ChatTemplate(e.to_string()))?;
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(|e| ModelError::ChatTemplate(e.to_string()))
    }
}

/// The ChatML template written into dummy models (the format SmolLM2 and Qwen use).
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_renders_a_generation_prompt() -> Result<()> {
        let t = ChatTemplate::new(CHATML_TEMPLATE.into(), String::new(), "<|im_end|>".into())?;
        let text = t.render(
            &[ChatMessage::new("user", "What is the capital of France?")],
            true,
        )?;
        assert_eq!(
            text,
            "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
        );
        Ok(())
    }

    #[test]
    fn raise_exception_becomes_an_error_naming_the_cause() -> Result<()> {
        let t = ChatTemplate::new(
            "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first turn must be user') }}{% endif %}".into(),
            String::new(),
            String::new(),
        )?;
        let err = t.render(&[ChatMessage::new("assistant", "hi")], true).err();
        assert!(err.is_some_and(|e| e.to_string().contains("first turn must be user")));
        Ok(())
    }

    #[test]
    fn python_string_methods_work() -> Result<()> {
        let t = ChatTemplate::new(
            "{{ messages[0]['content'].strip().upper() }}".into(),
            String::new(),
            String::new(),
        )?;
        assert_eq!(t.render(&[ChatMessage::new("user", "  hi ")], false)?, "HI");
        Ok(())
    }

    #[test]
    fn a_broken_template_is_refused_at_load() {
        assert!(ChatTemplate::new("{% for %}".into(), String::new(), String::new()).is_err());
    }
}
