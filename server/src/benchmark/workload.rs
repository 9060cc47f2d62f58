//! The prompts a run sends, made before the first request so that making them costs no
//! measured time: random word sequences of a set token length (exact through the server's
//! `/tokenize`, approximate without one), a shared-prefix workload (one system prompt, many
//! questions), multi-turn conversations, input-grounded edits and summaries of a document,
//! or the user's own JSONL file. Seeded: the same flags
//! send the same prompts to every server of a run and in every run.

use super::api::{Message, Prompt};
use super::client::WorkItem;
use anyhow::{bail, Context};
use clap::ValueEnum;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;
use serde_json::Value;
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Dataset {
    /// A distinct random prompt of `--input-len` tokens per request.
    Random,
    /// A system prompt of `--prefix-len` tokens shared by every request, then a distinct
    /// question of `--input-len` tokens (exercises prefix caching).
    SharedPrefix,
    /// Conversations of `--turns` user turns; each turn resends the whole history with the
    /// model's previous answers (exercises prefix caching across requests).
    MultiTurn,
    /// `--prompts FILE`: one JSON object per line, `{"prompt": "..."}` or
    /// `{"messages": [{"role", "content"}...]}`, optionally with `"max_tokens"`.
    Jsonl,
    /// Input-grounded: a document of about `--input-len` tokens (English prose) to repeat
    /// with one word changed, so the answer copies the prompt (what prompt-lookup speculation
    /// is for). With `--free-output`, room for the whole document.
    Edit,
    /// Input-grounded: a document of about `--input-len` tokens to summarize in its own words.
    Summarize,
}

#[derive(Debug, Clone)]
pub struct WorkloadSpec {
    pub dataset: Dataset,
    pub input_len: usize,
    pub output_len: Option<u32>,
    pub prefix_len: usize,
    pub turns: usize,
    pub prompts_file: Option<PathBuf>,
    pub seed: u64,
    /// Models (or LoRA adapters) to spread requests over, in turn; a dataset line's own
    /// `"model"` wins.
    pub models: Vec<String>,
}

/// One unit of work for a client: a request, and for conversations the user turns that follow
/// it once the previous answer is in.
#[derive(Debug, Clone)]
pub struct Job {
    pub first: WorkItem,
    pub follow_ups: Vec<String>,
}

impl Job {
    /// The request of the next turn: the history, the answer just received, the next question.
    pub fn next_turn(previous: &WorkItem, answer: &str, question: &str) -> WorkItem {
        let mut messages = match &previous.prompt {
            Prompt::Chat(messages) => messages.clone(),
            Prompt::Text(text) => vec![user(text.clone())],
        };
        messages.push(Message {
            role: "assistant".into(),
            content: answer.to_string(),
        });
        messages.push(user(question.to_string()));
        WorkItem {
            prompt: Prompt::Chat(messages),
            max_tokens: previous.max_tokens,
            model: previous.model.clone(),
        }
    }
}

fn user(content: String) -> Message {
    Message {
        role: "user".into(),
        content,
    }
}

/// Counts tokens the way the server will; `None` when it cannot.
pub trait TokenCount {
    fn count(&mut self, text: &str) -> Option<usize>;
}

/// Common English words that most BPE vocabularies hold as one token with their leading
/// space, so a prompt of n words is close to n tokens before any correction.
const WORDS: &[&str] = &[
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "was",
    "for",
    "on",
    "with",
    "as",
    "by",
    "at",
    "from",
    "this",
    "that",
    "are",
    "have",
    "not",
    "but",
    "all",
    "new",
    "time",
    "year",
    "people",
    "way",
    "day",
    "man",
    "world",
    "life",
    "hand",
    "part",
    "place",
    "case",
    "week",
    "point",
    "number",
    "group",
    "problem",
    "fact",
    "water",
    "house",
    "city",
    "river",
    "school",
    "state",
    "family",
    "story",
    "money",
    "light",
    "music",
    "market",
    "power",
    "game",
    "line",
    "night",
    "book",
    "road",
    "food",
    "paper",
    "window",
    "table",
    "garden",
    "summer",
    "winter",
    "morning",
    "open",
    "small",
    "large",
    "good",
    "great",
    "long",
    "little",
    "old",
    "high",
    "right",
    "early",
    "young",
    "important",
    "public",
    "simple",
    "strong",
    "green",
    "black",
    "white",
    "red",
    "blue",
    "make",
    "take",
    "come",
    "think",
    "look",
    "want",
    "give",
    "find",
    "tell",
    "work",
    "call",
];

/// Builds `count` jobs (for multi-turn, enough conversations for `count` requests).
pub fn build(
    spec: &WorkloadSpec,
    count: usize,
    tokens: &mut dyn TokenCount,
) -> anyhow::Result<Vec<Job>> {
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let item = |prompt| WorkItem {
        prompt,
        max_tokens: spec.output_len,
        model: None,
    };
    let mut jobs = build_prompts(spec, count, tokens, &mut rng, item)?;
    if !spec.models.is_empty() {
        for (index, job) in jobs.iter_mut().enumerate() {
            job.first
                .model
                .get_or_insert_with(|| spec.models[index % spec.models.len()].clone());
        }
    }
    Ok(jobs)
}

fn build_prompts(
    spec: &WorkloadSpec,
    count: usize,
    tokens: &mut dyn TokenCount,
    rng: &mut ChaCha8Rng,
    item: impl Fn(Prompt) -> WorkItem,
) -> anyhow::Result<Vec<Job>> {
    Ok(match spec.dataset {
        Dataset::Random => (0..count)
            .map(|_| Job {
                first: item(Prompt::Text(text_of_length(
                    rng,
                    spec.input_len,
                    tokens,
                ))),
                follow_ups: Vec::new(),
            })
            .collect(),
        Dataset::SharedPrefix => {
            let system = text_of_length(rng, spec.prefix_len, tokens);
            (0..count)
                .map(|_| {
                    let question = text_of_length(rng, spec.input_len, tokens);
                    let system = Message {
                        role: "system".into(),
                        content: system.clone(),
                    };
                    Job {
                        first: item(Prompt::Chat(vec![system, user(question)])),
                        follow_ups: Vec::new(),
                    }
                })
                .collect()
        }
        Dataset::MultiTurn => {
            let turns = spec.turns.max(1);
            (0..count.div_ceil(turns))
                .map(|_| {
                    let mut questions: Vec<String> = (0..turns)
                        .map(|_| text_of_length(rng, spec.input_len, tokens))
                        .collect();
                    let first = questions.remove(0);
                    Job {
                        first: item(Prompt::Chat(vec![user(first)])),
                        follow_ups: questions,
                    }
                })
                .collect()
        }
        Dataset::Edit | Dataset::Summarize => (0..count)
            .map(|_| {
                let (document, length) = document_of_length(rng, spec.input_len, tokens);
                let (task, room) = if spec.dataset == Dataset::Edit {
                    (
                        "Repeat the text below exactly as it is, word for word, except that every \"sequence\" becomes \"stream\". Write nothing else.",
                        length + length / 8 + 16,
                    )
                } else {
                    (
                        "Summarize the text below in a few sentences, keeping its own wording where you can.",
                        length / 3 + 16,
                    )
                };
                Job {
                    first: WorkItem {
                        prompt: Prompt::Chat(vec![user(format!("{task}\n\n{document}"))]),
                        max_tokens: spec.output_len.or(Some(room as u32)),
                        model: None,
                    },
                    follow_ups: Vec::new(),
                }
            })
            .collect(),
        Dataset::Jsonl => {
            let path = spec
                .prompts_file
                .as_ref()
                .context("--dataset jsonl needs --prompts FILE")?;
            let lines = read_jsonl(path, spec.output_len)?;
            if lines.is_empty() {
                bail!("{} holds no prompts", path.display());
            }
            // The file's prompts in order, from the start again when more are needed.
            lines
                .iter()
                .cycle()
                .take(count)
                .map(|first| Job {
                    first: first.clone(),
                    follow_ups: Vec::new(),
                })
                .collect()
        }
    })
}

/// Random words, `target` tokens long by the server's count: start from `target` words, then
/// add or remove words in proportion to the difference until the count is exact (a few
/// rounds; where whole words cannot hit it, the closest text found). Without a count,
/// `target` words.
fn text_of_length(rng: &mut ChaCha8Rng, target: usize, tokens: &mut dyn TokenCount) -> String {
    let mut words: Vec<&str> = (0..target.max(1))
        .map(|_| *WORDS.choose(rng).unwrap_or(&"the"))
        .collect();
    let mut best = words.join(" ");
    let mut best_gap = usize::MAX;
    for _ in 0..8 {
        let text = words.join(" ");
        let Some(count) = tokens.count(&text) else {
            return text;
        };
        let gap = count.abs_diff(target);
        if gap < best_gap {
            (best, best_gap) = (text, gap);
        }
        if gap == 0 {
            break;
        }
        let tokens_per_word = count.max(1) as f64 / words.len() as f64;
        let change = ((gap as f64 / tokens_per_word).round() as usize).max(1);
        if count > target {
            words.truncate(words.len().saturating_sub(change).max(1));
        } else {
            for _ in 0..change {
                words.push(WORDS[rng.random_range(0..WORDS.len())]);
            }
        }
    }
    best
}

/// Consecutive sentences of the corpus from a seeded start (wrapping around), about `target`
/// tokens by the server's count (sentences are whole, so within one sentence of it); with
/// the count reached. Without a count, `target` words.
fn document_of_length(
    rng: &mut ChaCha8Rng,
    target: usize,
    tokens: &mut dyn TokenCount,
) -> (String, usize) {
    // Sentences on one line each (the corpus wraps its lines).
    let sentences: Vec<String> = lantern_models::dummy::corpus()
        .split_inclusive(['.', '?', '!'])
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|s| !s.is_empty())
        .collect();
    let start = rng.random_range(0..sentences.len().max(1));
    let mut document = String::new();
    let mut length = 0;
    for sentence in sentences
        .iter()
        .cycle()
        .skip(start)
        .take(sentences.len() * 8)
    {
        if length >= target {
            break;
        }
        if !document.is_empty() {
            document.push(' ');
        }
        document.push_str(sentence);
        length = tokens
            .count(&document)
            .unwrap_or_else(|| document.split_whitespace().count());
    }
    (document, length)
}

#[derive(Deserialize)]
struct JsonlLine {
    prompt: Option<String>,
    messages: Option<Vec<Message>>,
    max_tokens: Option<u32>,
    model: Option<String>,
}

fn read_jsonl(path: &PathBuf, output_len: Option<u32>) -> anyhow::Result<Vec<WorkItem>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut items = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let where_ = || format!("{} line {}", path.display(), index + 1);
        let value: Value = serde_json::from_str(line).with_context(where_)?;
        let parsed: JsonlLine = serde_json::from_value(value).with_context(where_)?;
        let prompt = match (parsed.prompt, parsed.messages) {
            (Some(text), None) => Prompt::Text(text),
            (None, Some(messages)) if !messages.is_empty() => Prompt::Chat(messages),
            _ => bail!("{}: give either \"prompt\" or \"messages\"", where_()),
        };
        items.push(WorkItem {
            prompt,
            max_tokens: parsed.max_tokens.or(output_len),
            model: parsed.model,
        });
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tokenizer that splits on spaces and splits words over 5 letters in two.
    struct SplitLongWords;

    impl TokenCount for SplitLongWords {
        fn count(&mut self, text: &str) -> Option<usize> {
            Some(
                text.split(' ')
                    .map(|w| if w.len() > 5 { 2 } else { 1 })
                    .sum(),
            )
        }
    }

    struct NoCount;

    impl TokenCount for NoCount {
        fn count(&mut self, _: &str) -> Option<usize> {
            None
        }
    }

    fn spec(dataset: Dataset) -> WorkloadSpec {
        WorkloadSpec {
            dataset,
            input_len: 40,
            output_len: Some(8),
            prefix_len: 100,
            turns: 3,
            prompts_file: None,
            seed: 7,
            models: Vec::new(),
        }
    }

    #[test]
    fn random_prompts_have_the_exact_length_the_server_counts() {
        let jobs = build(&spec(Dataset::Random), 20, &mut SplitLongWords).unwrap_or_default();
        assert_eq!(jobs.len(), 20);
        for job in &jobs {
            let Prompt::Text(text) = &job.first.prompt else {
                panic!("random prompts are text");
            };
            assert_eq!(SplitLongWords.count(text), Some(40), "{text}");
            assert_eq!(job.first.max_tokens, Some(8));
        }
        // Seeded: the same spec makes the same prompts.
        let again = build(&spec(Dataset::Random), 20, &mut SplitLongWords).unwrap_or_default();
        assert_eq!(jobs[3].first.prompt, again[3].first.prompt);
        let plain = build(&spec(Dataset::Random), 1, &mut NoCount).unwrap_or_default();
        let Prompt::Text(text) = &plain[0].first.prompt else {
            panic!("random prompts are text");
        };
        assert_eq!(text.split(' ').count(), 40);
    }

    #[test]
    fn shared_prefix_and_multi_turn_workloads_share_what_they_should() {
        let jobs = build(&spec(Dataset::SharedPrefix), 4, &mut SplitLongWords).unwrap_or_default();
        let systems: Vec<&Prompt> = jobs.iter().map(|j| &j.first.prompt).collect();
        let (Prompt::Chat(a), Prompt::Chat(b)) = (systems[0], systems[1]) else {
            panic!("shared-prefix prompts are chats");
        };
        assert_eq!(a[0], b[0]);
        assert_ne!(a[1], b[1]);
        assert_eq!(SplitLongWords.count(&a[0].content), Some(100));

        let conversations =
            build(&spec(Dataset::MultiTurn), 7, &mut SplitLongWords).unwrap_or_default();
        assert_eq!(
            conversations.len(),
            3,
            "7 requests of 3 turns need 3 conversations"
        );
        let job = &conversations[0];
        assert_eq!(job.follow_ups.len(), 2);
        let second = Job::next_turn(&job.first, "an answer", &job.follow_ups[0]);
        let Prompt::Chat(history) = &second.prompt else {
            panic!("turns are chats");
        };
        let roles: Vec<&str> = history.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["user", "assistant", "user"]);
        assert_eq!(history[1].content, "an answer");
    }

    #[test]
    fn input_grounded_prompts_carry_a_document_of_the_corpus_and_room_to_copy_it() {
        let mut edit = spec(Dataset::Edit);
        edit.output_len = None;
        let jobs = build(&edit, 5, &mut SplitLongWords).unwrap_or_default();
        assert_eq!(jobs.len(), 5);
        let corpus: String = lantern_models::dummy::corpus()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        for job in &jobs {
            let Prompt::Chat(messages) = &job.first.prompt else {
                panic!("input-grounded prompts are chats");
            };
            let (task, document) = messages[0].content.split_once("\n\n").unwrap_or_default();
            assert!(task.contains("exactly"), "{task}");
            let words = SplitLongWords.count(document).unwrap_or(0);
            assert!((40..40 + 80).contains(&words), "{words} tokens: {document}");
            // A run of the corpus (its sentences in order, wrapping at most once here).
            let first_sentence = document
                .split_inclusive('.')
                .next()
                .unwrap_or_default()
                .trim();
            assert!(corpus.contains(first_sentence), "{first_sentence}");
            // Room for the whole document and the edit.
            assert!(
                job.first.max_tokens.unwrap_or(0) as usize > words,
                "{:?}",
                job.first.max_tokens
            );
        }
        let again = build(&edit, 5, &mut SplitLongWords).unwrap_or_default();
        assert_eq!(jobs[2].first.prompt, again[2].first.prompt);
        let summaries = build(&spec(Dataset::Summarize), 2, &mut NoCount).unwrap_or_default();
        let Prompt::Chat(messages) = &summaries[0].first.prompt else {
            panic!("input-grounded prompts are chats");
        };
        assert!(messages[0].content.starts_with("Summarize"));
        assert_eq!(summaries[0].first.max_tokens, Some(8));
    }

    #[test]
    fn jsonl_files_give_prompts_chats_and_budgets_or_a_clear_error() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("p.jsonl");
        let lines = "{\"prompt\": \"hello\"}\n\n{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"max_tokens\": 3}\n";
        std::fs::write(&path, lines).unwrap_or_else(|e| panic!("{e}"));
        let mut s = spec(Dataset::Jsonl);
        s.prompts_file = Some(path.clone());
        let jobs = build(&s, 3, &mut NoCount).unwrap_or_default();
        assert_eq!(jobs.len(), 3);
        assert_eq!(jobs[0].first.prompt, Prompt::Text("hello".into()));
        assert_eq!(jobs[0].first.max_tokens, Some(8));
        assert_eq!(jobs[1].first.max_tokens, Some(3));
        assert_eq!(jobs[2].first.prompt, jobs[0].first.prompt);
        std::fs::write(&path, "{\"text\": 1}\n").unwrap_or_else(|e| panic!("{e}"));
        let error = build(&s, 1, &mut NoCount).err().map(|e| format!("{e:#}"));
        assert!(error.is_some_and(|e| e.contains("line 1")));
    }

    /// `--model a,b,c`: requests take the models in turn; a line's own `"model"` wins.
    #[test]
    fn requests_spread_over_models_unless_a_line_names_its_own() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("p.jsonl");
        let lines = "{\"prompt\": \"a\"}\n{\"prompt\": \"b\", \"model\": \"sql\"}\n";
        std::fs::write(&path, lines).unwrap_or_else(|e| panic!("{e}"));
        let mut s = spec(Dataset::Jsonl);
        s.prompts_file = Some(path);
        s.models = vec!["base".into(), "tone".into(), "legal".into()];
        let models: Vec<Option<String>> = build(&s, 4, &mut NoCount)
            .unwrap_or_default()
            .into_iter()
            .map(|job| job.first.model)
            .collect();
        let named = |m: &str| Some(m.to_string());
        assert_eq!(
            models,
            [named("base"), named("sql"), named("legal"), named("sql")]
        );
        let mut random = spec(Dataset::Random);
        random.models = vec!["x".into(), "y".into()];
        let jobs = build(&random, 4, &mut NoCount).unwrap_or_default();
        let spread: Vec<_> = jobs.iter().map(|j| j.first.model.clone()).collect();
        assert_eq!(spread, [named("x"), named("y"), named("x"), named("y")]);
    }
}
