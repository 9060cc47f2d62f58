//! The limits every request is held to, written once: the HTTP layer checks a request before
//! it does any work for it (tokenizing, compiling a grammar, taking an in-flight slot) and again
//! once its prompt is tokenized; the engine's API checks it on submission; the scheduler on
//! admission. Each check names the field the way the request's API spells it (OpenAI's
//! `max_tokens`, TGI's `max_new_tokens`).

/// Alternatives reported per token, at most (TGI's `top_n_tokens`, OpenAI's `logprobs`).
pub const MAX_TOP_N_TOKENS: usize = 5;

/// The bounds of one serving configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest prompt; `None`: only `max_total_tokens` bounds it.
    pub max_input_tokens: Option<usize>,
    /// Prompt plus new tokens.
    pub max_total_tokens: usize,
    /// The whole KV cache, which one request must fit: blocks, and tokens per block.
    pub num_blocks: usize,
    pub block_size: usize,
}

/// What is known of a request when it is checked (before tokenizing, not its prompt's length;
/// before defaults are applied, maybe not its number of new tokens).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestSize {
    pub prompt_tokens: Option<usize>,
    pub max_new_tokens: Option<usize>,
    pub top_n_tokens: usize,
}

/// How an API names the fields a refusal points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldNames {
    pub prompt: &'static str,
    pub max_new_tokens: &'static str,
    pub top_n_tokens: &'static str,
}

impl FieldNames {
    /// The engine's own names (TGI's).
    pub const ENGINE: Self = Self {
        prompt: "inputs",
        max_new_tokens: "max_new_tokens",
        top_n_tokens: "top_n_tokens",
    };
}

impl Default for FieldNames {
    fn default() -> Self {
        Self::ENGINE
    }
}

/// Why a request can never run, so must not wait: the client's error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the prompt is empty")]
    EmptyPrompt { field: &'static str },
    #[error("`{field}` must be at least 1")]
    NoNewTokens { field: &'static str },
    #[error("`{field}` must be at most {MAX_TOP_N_TOKENS}, got {got}")]
    TooManyAlternatives { field: &'static str, got: usize },
    #[error("the prompt has {prompt} tokens, more than max_input_tokens ({limit}); shorten it or set `truncate`")]
    OverInputTokens {
        prompt: usize,
        limit: usize,
        field: &'static str,
    },
    #[error("`{field}` ({max_new_tokens}) leaves no room for a prompt within max_total_tokens ({limit})")]
    NoRoomForPrompt {
        max_new_tokens: usize,
        limit: usize,
        field: &'static str,
    },
    #[error("prompt ({prompt} tokens) + {field} ({max_new_tokens}) = {} exceeds max_total_tokens ({limit})", prompt.saturating_add(*max_new_tokens))]
    OverTotalTokens {
        prompt: usize,
        max_new_tokens: usize,
        limit: usize,
        field: &'static str,
    },
    #[error("prompt ({prompt} tokens) + {field} ({max_new_tokens}) needs {needed} KV-cache blocks, more than the whole cache ({total} blocks of {block_size} tokens)")]
    OverCache {
        prompt: usize,
        max_new_tokens: usize,
        needed: usize,
        total: usize,
        block_size: usize,
        field: &'static str,
    },
}

impl Refusal {
    /// The request field at fault, as its API names it.
    pub fn field(&self) -> &'static str {
        match self {
            Self::EmptyPrompt { field }
            | Self::NoNewTokens { field }
            | Self::TooManyAlternatives { field, .. }
            | Self::OverInputTokens { field, .. }
            | Self::NoRoomForPrompt { field, .. }
            | Self::OverTotalTokens { field, .. }
            | Self::OverCache { field, .. } => field,
        }
    }
}

impl Limits {
    /// Checks what is known of a request (counts from clients: no arithmetic here overflows).
    pub fn check(&self, size: RequestSize, names: FieldNames) -> Result<(), Refusal> {
        if size.max_new_tokens == Some(0) {
            return Err(Refusal::NoNewTokens {
                field: names.max_new_tokens,
            });
        }
        if size.top_n_tokens > MAX_TOP_N_TOKENS {
            return Err(Refusal::TooManyAlternatives {
                field: names.top_n_tokens,
                got: size.top_n_tokens,
            });
        }
        let Some(prompt) = size.prompt_tokens else {
            return match size.max_new_tokens {
                Some(n) if n >= self.max_total_tokens => Err(Refusal::NoRoomForPrompt {
                    max_new_tokens: n,
                    limit: self.max_total_tokens,
                    field: names.max_new_tokens,
                }),
                _ => Ok(()),
            };
        };
        if prompt == 0 {
            return Err(Refusal::EmptyPrompt {
                field: names.prompt,
            });
        }
        if let Some(limit) = self.max_input_tokens.filter(|&limit| prompt > limit) {
            return Err(Refusal::OverInputTokens {
                prompt,
                limit,
                field: names.prompt,
            });
        }
        let Some(max_new_tokens) = size.max_new_tokens else {
            return Ok(());
        };
        let total = prompt
            .checked_add(max_new_tokens)
            .filter(|&total| total <= self.max_total_tokens)
            .ok_or(Refusal::OverTotalTokens {
                prompt,
                max_new_tokens,
                limit: self.max_total_tokens,
                field: names.max_new_tokens,
            })?;
        let needed = total.div_ceil(self.block_size.max(1));
        if needed > self.num_blocks {
            return Err(Refusal::OverCache {
                prompt,
                max_new_tokens,
                needed,
                total: self.num_blocks,
                block_size: self.block_size,
                field: names.max_new_tokens,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_input_tokens: Some(100),
        max_total_tokens: 128,
        num_blocks: 4,
        block_size: 16,
    };
    const OPENAI: FieldNames = FieldNames {
        prompt: "messages",
        max_new_tokens: "max_tokens",
        top_n_tokens: "top_logprobs",
    };

    fn size(prompt: Option<usize>, new: Option<usize>, top_n: usize) -> RequestSize {
        RequestSize {
            prompt_tokens: prompt,
            max_new_tokens: new,
            top_n_tokens: top_n,
        }
    }

    #[test]
    fn each_limit_refuses_naming_the_api_s_field() {
        let cases = [
            (size(None, Some(0), 0), "max_tokens"),
            (size(None, Some(1), 6), "top_logprobs"),
            (size(None, Some(128), 0), "max_tokens"),
            (size(Some(0), Some(1), 0), "messages"),
            (size(Some(101), None, 0), "messages"),
            (size(Some(100), Some(29), 0), "max_tokens"),
            // 64 tokens fit the total but need 4 blocks... and 65 need 5 of the 4.
            (size(Some(60), Some(5), 0), "max_tokens"),
        ];
        for (request, field) in cases {
            let refusal = LIMITS.check(request, OPENAI).err();
            assert_eq!(
                refusal.as_ref().map(Refusal::field),
                Some(field),
                "{request:?}"
            );
            let message = refusal.map(|r| r.to_string()).unwrap_or_default();
            assert!(
                message.contains(field) || message.contains("prompt"),
                "{message}"
            );
        }
    }

    #[test]
    fn what_fits_passes_before_and_after_tokenizing() {
        for request in [
            size(None, None, 5),
            size(None, Some(127), 0),
            size(Some(100), None, 0),
            size(Some(40), Some(24), 5),
        ] {
            assert_eq!(LIMITS.check(request, OPENAI), Ok(()), "{request:?}");
        }
        // Counts near usize::MAX do not overflow.
        let unbounded_input = Limits {
            max_input_tokens: None,
            ..LIMITS
        };
        let huge = size(Some(usize::MAX), Some(usize::MAX), 0);
        assert!(matches!(
            unbounded_input.check(huge, FieldNames::ENGINE),
            Err(Refusal::OverTotalTokens { .. })
        ));
    }
}
