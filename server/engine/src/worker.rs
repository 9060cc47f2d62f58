//! The engine thread: owns the decoder (and with it the KV cache), runs one scheduler step after another,
//! samples, detokenizes and sends each request its events. Model steps block, so this is an OS
//! thread; the async world talks to it through channels only.
//!
//! A failed or panicking step fails the requests it carried with an error event and frees
//! their blocks; the others go on. Only several failed steps in a row (the fault policy) fail
//! everything and mark the engine unhealthy: nobody is left waiting either way.

use crate::channel::{Command, Shared};
use crate::config::FaultPolicy;
use crate::constraint::{AllowedTokens, Constraint};
use crate::detokenize::IncrementalDecoder;
use crate::masks_ahead::beside_forward;
use crate::prefill_budget::PrefillBudget;
use crate::request::{Completion, Event, FinishReason, PromptLogprob, TokenEvent};
use crate::sampling::Sampler;
use crate::scheduler::{Scheduler, SchedulerStats, SequenceId, SequenceOptions, SpeculationStats};
use crate::stop::{StopMatcher, StopOutcome};
use lantern_models::Decoder;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::Arc;
use std::time::Instant;
use tokenizers::Tokenizer;
use tokio::sync::mpsc::UnboundedSender;

mod adapters;
mod choose;
mod choose_on_device;
mod speculate;
use choose::Choice;

/// Output-side state of one request.
struct Active {
    events: UnboundedSender<Event>,
    sampler: Sampler,
    prompt: Vec<u32>,
    generated: Vec<u32>,
    max_new_tokens: usize,
    ignore_eos: bool,
    detokenizer: IncrementalDecoder,
    stop: StopMatcher,
    submitted_at: Instant,
    scheduled_at: Option<Instant>,
    first_token_at: Option<Instant>,
    /// Filled by steps that computed the prompt with every row's logits, when asked for.
    prompt_logprobs: Vec<Option<PromptLogprob>>,
    /// The grammar the output is held to, if any.
    constraint: Option<Constraint>,
    /// The grammar's mask for this step, computed during the forward pass.
    allowed: Option<Result<AllowedTokens, String>>,
    /// The request's span (its id), for what the engine logs about it.
    span: tracing::Span,
    /// Moving share of its proposed tokens that stood (speculation.rs), from 1.
    draft_acceptance: f64,
    /// The LoRA adapter it runs under.
    adapter: Option<crate::adapters::AdapterRef>,
}

impl Active {
    /// The prompt and the tokens generated so far.
    fn context(&self) -> Vec<u32> {
        self.prompt.iter().chain(&self.generated).copied().collect()
    }
}

pub(crate) struct Worker {
    pub decoder: Decoder,
    pub tokenizer: Arc<Tokenizer>,
    pub eos_token_ids: Vec<u32>,
    pub scheduler: Scheduler,
    pub commands: Receiver<Command>,
    pub shared: Arc<Shared>,
    active: HashMap<SequenceId, Active>,
    last_batch_size: usize,
    faults: FaultPolicy,
    /// Sequences of the step being run, failed together if it fails.
    in_step: Vec<SequenceId>,
    consecutive_failures: usize,
    /// Model steps run (for fault injection).
    model_steps: u64,
    /// See `EngineConfig::release_memory_after_idle`.
    idle_release: Option<std::time::Duration>,
    /// Steps ran since memory was last released.
    holds_step_memory: bool,
    idle_releases: u64,
    /// Next tokens chosen where the logits are (the GPU) rather than on the host.
    sample_on_device: bool,
    /// What steps cost, measured; it holds prefill beside decoding to
    /// `--max-decode-stall-ms` when `bound_prefill`, and gates speculation.
    step_costs: PrefillBudget,
    bound_prefill: bool,
    /// Tokens proposed per decoding sequence by prompt lookup (`--speculate`); 0: off.
    speculate: usize,
    speculation: SpeculationStats,
    /// Proposes instead of prompt lookup when given (`--draft-model`).
    draft_model: Option<crate::draft_model::DraftModel>,
    /// The LoRA adapters loaded in the decoder.
    adapters: adapters::ResidentAdapters,
}

impl Worker {
    pub fn new(
        decoder: Decoder,
        tokenizer: Arc<Tokenizer>,
        eos_token_ids: Vec<u32>,
        scheduler: Scheduler,
        commands: Receiver<Command>,
        shared: Arc<Shared>,
    ) -> Self {
        Self {
            decoder,
            tokenizer,
            eos_token_ids,
            scheduler,
            commands,
            shared,
            active: HashMap::new(),
            last_batch_size: 0,
            faults: FaultPolicy::default(),
            in_step: Vec::new(),
            consecutive_failures: 0,
            model_steps: 0,
            idle_release: None,
            // Warm-up ran steps on this cache and decoder.
            holds_step_memory: true,
            idle_releases: 0,
            sample_on_device: false,
            step_costs: PrefillBudget::new(std::time::Duration::MAX, usize::MAX, 1),
            bound_prefill: false,
            speculate: 0,
            speculation: SpeculationStats::default(),
            draft_model: None,
            adapters: adapters::ResidentAdapters::new(usize::MAX, usize::MAX),
        }
    }

    /// At most `max` adapters loaded at once, of ranks up to `max_rank`.
    pub fn with_adapters(mut self, max: usize, max_rank: usize) -> Self {
        self.adapters = adapters::ResidentAdapters::new(max, max_rank);
        self.scheduler.set_max_adapters(self.adapters.max());
        self
    }

    pub fn with_draft_model(mut self, draft: Option<crate::draft_model::DraftModel>) -> Self {
        self.draft_model = draft;
        self
    }

    pub fn with_speculation(mut self, tokens: usize) -> Self {
        self.speculate = tokens;
        self
    }

    pub fn with_step_costs(mut self, costs: PrefillBudget, bound_prefill: bool) -> Self {
        self.step_costs = costs;
        self.bound_prefill = bound_prefill;
        self
    }

    pub fn with_sampling_place(mut self, on_device: bool) -> Self {
        self.sample_on_device = on_device;
        self
    }

    pub fn with_fault_policy(mut self, faults: FaultPolicy) -> Self {
        self.faults = faults;
        self
    }

    pub fn with_idle_release(mut self, after: Option<std::time::Duration>) -> Self {
        self.idle_release = after;
        self
    }

    pub fn run(mut self) {
        while self.receive_commands() {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.step()));
            let failure = match outcome {
                Ok(Ok(())) => None,
                Ok(Err(error)) => Some(format!("model step failed: {error}")),
                Err(panic) => Some(format!("engine panicked: {}", panic_message(&panic))),
            };
            match failure {
                Some(message) => self.step_failed(&message),
                None if !self.in_step.is_empty() => self.consecutive_failures = 0,
                None => {}
            }
            self.in_step.clear();
            self.publish_stats();
        }
        tracing::info!("engine stopped: every handle was dropped");
    }

    /// Takes new commands, blocking while there is nothing to do. False once every handle is gone.
    fn receive_commands(&mut self) -> bool {
        if self.scheduler.is_idle() {
            match self.next_command_while_idle() {
                Some(command) => self.accept(command),
                None => return false,
            }
        }
        loop {
            match self.commands.try_recv() {
                Ok(command) => self.accept(command),
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => return !self.scheduler.is_idle(),
            }
        }
    }

    /// Waits for a command with nothing to run; after `idle_release` of waiting, first hands
    /// the KV pages and step buffers back to the OS, keeping the keys of cached prefixes (no
    /// sequence holds a block now). None once every handle is gone.
    fn next_command_while_idle(&mut self) -> Option<Command> {
        if let Some(after) = self.idle_release.filter(|_| self.holds_step_memory) {
            match self.commands.recv_timeout(after) {
                Ok(command) => return Some(command),
                Err(RecvTimeoutError::Disconnected) => return None,
                Err(RecvTimeoutError::Timeout) => {
                    self.decoder
                        .release_idle_memory(&self.scheduler.cached_blocks());
                    self.holds_step_memory = false;
                    self.idle_releases += 1;
                    self.publish_stats();
                    tracing::debug!("idle: KV pages and step buffers handed back");
                }
            }
        }
        self.commands.recv().ok()
    }

    fn accept(&mut self, command: Command) {
        let (id, request, leader, events, submitted_at) = match command {
            Command::Submit {
                id,
                request,
                leader,
                events,
                submitted_at,
            } => (id, *request, leader, events, submitted_at),
            Command::LoadAdapter { adapter, reply } => {
                let _ = reply.send(self.load_adapter(&adapter, &[]));
                self.publish_stats();
                return;
            }
            Command::UnloadAdapter { id } => {
                self.unload_adapter(id);
                self.publish_stats();
                return;
            }
        };
        if !self.shared.healthy.load(Ordering::Acquire) {
            let _ = events.send(Event::Failed("the engine is unhealthy".into()));
            return;
        }
        let options = SequenceOptions {
            leader,
            prompt_logprobs: request.prompt_logprobs,
            adapter: request.adapter.as_ref().map(|a| a.id),
        };
        if let Err(refusal) =
            self.scheduler
                .add_with(id, request.prompt.clone(), request.max_new_tokens, options)
        {
            let _ = events.send(Event::Failed(refusal.to_string()));
            return;
        }
        self.active.insert(
            id,
            Active {
                events,
                sampler: Sampler::new(request.sampling),
                prompt: request.prompt,
                generated: Vec::new(),
                max_new_tokens: request.max_new_tokens,
                ignore_eos: request.ignore_eos,
                detokenizer: IncrementalDecoder::new(),
                stop: StopMatcher::new(request.stop),
                submitted_at,
                scheduled_at: None,
                first_token_at: None,
                prompt_logprobs: Vec::new(),
                constraint: request.constraint,
                allowed: None,
                span: request.span,
                draft_acceptance: 1.0,
                adapter: request.adapter,
            },
        );
    }

    fn step(&mut self) -> Result<(), lantern_models::ModelError> {
        // A closed channel means the client left: free its blocks before planning.
        let gone: Vec<SequenceId> = self
            .active
            .iter()
            .filter(|(_, a)| a.events.is_closed())
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            self.scheduler.remove(id);
            self.active.remove(&id);
        }
        if self.bound_prefill {
            self.scheduler
                .set_prefill_while_decoding(self.step_costs.while_decoding());
        }
        if self.speculate > 0 && !self.sample_on_device {
            self.propose_drafts();
        }
        let plan = self.scheduler.schedule();
        if plan.steps.is_empty() || !self.load_adapters_of(&plan) {
            return Ok(());
        }
        let started = Instant::now();
        let now = Instant::now();
        for scheduled in &plan.steps {
            if let Some(active) = self.active.get_mut(&scheduled.id) {
                active.scheduled_at.get_or_insert(now);
            }
        }
        self.last_batch_size = plan.steps.len();
        self.in_step = plan.steps.iter().map(|s| s.id).collect();
        let steps: Vec<_> = plan.steps.iter().map(|s| s.step.clone()).collect();
        self.model_steps += 1;
        self.holds_step_memory = true;
        self.maybe_inject_fault()?;
        let mut pending = self.lend_constraints(&plan);
        let decoder = &mut self.decoder;
        let logits = beside_forward(&mut pending, || decoder.forward(&steps));
        for p in pending {
            if let Some(active) = self.active.get_mut(&p.key) {
                active.constraint = Some(p.constraint);
                active.allowed = p.allowed;
            }
        }
        let logits = logits?;
        self.scheduler.complete(&plan);
        let (sampled, logits, drafted) = self.take_prompt_logprobs(&plan, logits)?;
        let choices = self.choose(&sampled, &logits)?;
        let verified: Vec<_> = drafted
            .into_iter()
            .map(|draft| self.verify_draft(draft))
            .collect();
        if verified.is_empty() {
            // (A step with drafts costs more than a decode step: it would skew the measure.)
            self.step_costs
                .observe(plan.prefill_tokens, plan.decoding, started.elapsed());
        }
        for (id, choice) in sampled.into_iter().zip(choices) {
            self.deliver(id, choice, false);
        }
        for (id, accepted, choices) in verified {
            // The accepted proposals are in the scheduler's tokens already; the last choice
            // (the model's own at the first rejected or the next position) is not.
            for (index, choice) in choices.into_iter().enumerate() {
                if !self.deliver(id, choice, index < accepted) {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Sends a sampled token to its request and decides whether the request ends here; true
    /// while it goes on. `in_scheduler`: the token is already the sequence's (an accepted
    /// proposal).
    fn deliver(&mut self, id: SequenceId, choice: Choice, in_scheduler: bool) -> bool {
        let Some(active) = self.active.get_mut(&id) else {
            return false;
        };
        if let Some(message) = choice.failed {
            let _ = active.events.send(Event::Failed(message));
            self.scheduler.remove(id);
            self.active.remove(&id);
            return false;
        }
        active.first_token_at.get_or_insert_with(Instant::now);
        // Under a grammar, EOS ends the output even with ignore_eos: the grammar allowed it.
        let is_eos = (!active.ignore_eos || choice.grammar_done)
            && self.eos_token_ids.contains(&choice.token);
        let mut finish = None;
        let text = if is_eos {
            finish = Some(FinishReason::EosToken);
            String::new()
        } else {
            active.generated.push(choice.token);
            let delta = active.detokenizer.step(&self.tokenizer, &active.generated);
            match active.stop.push(&delta) {
                StopOutcome::Continue(text) => text,
                StopOutcome::Stop(text) => {
                    finish = Some(FinishReason::StopSequence);
                    text
                }
            }
        };
        if finish.is_none() && choice.grammar_done {
            finish = Some(FinishReason::EosToken);
        }
        if finish.is_none() && active.generated.len() >= active.max_new_tokens {
            finish = Some(FinishReason::Length);
        }
        let event = Event::Token(TokenEvent {
            id: choice.token,
            text,
            logprob: choice.logprob,
            top: choice.top,
            special: is_eos,
        });
        let delivered = active.events.send(event).is_ok();
        match finish {
            Some(reason) => self.finish(id, reason),
            None if delivered => {
                if !in_scheduler {
                    self.scheduler.push_token(id, choice.token);
                }
                return true;
            }
            None => {
                self.scheduler.remove(id);
                self.active.remove(&id);
            }
        }
        false
    }

    fn finish(&mut self, id: SequenceId, mut reason: FinishReason) {
        let cached_tokens = self.scheduler.cached_tokens(id);
        self.scheduler.remove(id);
        let Some(mut active) = self.active.remove(&id) else {
            return;
        };
        let mut trailing = String::new();
        if reason != FinishReason::StopSequence {
            // Text held back for a partial character or a possible stop sequence.
            let rest = active
                .detokenizer
                .finish(&self.tokenizer, &active.generated);
            match active.stop.push(&rest) {
                StopOutcome::Stop(text) => {
                    trailing = text;
                    reason = FinishReason::StopSequence;
                }
                StopOutcome::Continue(text) => trailing = text + &active.stop.flush(),
            }
        }
        let now = Instant::now();
        let completion = Completion {
            finish_reason: reason,
            trailing_text: trailing,
            prompt_tokens: active.prompt.len(),
            cached_tokens,
            generated_tokens: active.generated.len()
                + usize::from(reason == FinishReason::EosToken),
            queue_time: active.scheduled_at.unwrap_or(now) - active.submitted_at,
            time_to_first_token: active.first_token_at.unwrap_or(now) - active.submitted_at,
            total_time: now - active.submitted_at,
            seed: active.sampler.seed(),
            prompt_logprobs: std::mem::take(&mut active.prompt_logprobs),
        };
        active.span.in_scope(|| {
            tracing::debug!(
                finish_reason = completion.finish_reason.as_str(),
                generated_tokens = completion.generated_tokens,
                "engine finished the request"
            )
        });
        let _ = active.events.send(Event::End(completion));
    }

    /// Test-only faults (`FaultPolicy::inject_every`): every n-th model step fails, the first
    /// with a panic, the second with an error, and so on.
    fn maybe_inject_fault(&self) -> Result<(), lantern_models::ModelError> {
        let Some(every) = self.faults.inject_every.filter(|&n| n > 0) else {
            return Ok(());
        };
        if !self.model_steps.is_multiple_of(every) {
            return Ok(());
        }
        if !(self.model_steps / every).is_multiple_of(2) {
            panic!("injected fault (panic) at model step {}", self.model_steps);
        }
        Err(lantern_models::ModelError::Kernels(format!(
            "injected fault at model step {}",
            self.model_steps
        )))
    }

    /// A failed step: its sequences end with the error and give their blocks back; the rest
    /// carry on, unless this is one failure too many in a row. A failure outside a model step
    /// (planning) leaves the scheduler's state in doubt: everything fails then.
    fn step_failed(&mut self, message: &str) {
        self.consecutive_failures += 1;
        if self.in_step.is_empty() || self.consecutive_failures >= self.faults.max_consecutive {
            self.fail_everything(message);
            return;
        }
        tracing::error!(
            error = message,
            failed_requests = self.in_step.len(),
            consecutive_failures = self.consecutive_failures,
            "engine step failed; its requests get the error, the engine goes on"
        );
        for id in std::mem::take(&mut self.in_step) {
            self.scheduler.remove(id);
            if let Some(active) = self.active.remove(&id) {
                active
                    .span
                    .in_scope(|| tracing::warn!(error = message, "request failed with its step"));
                let _ = active.events.send(Event::Failed(message.to_string()));
            }
        }
    }

    fn fail_everything(&mut self, message: &str) {
        tracing::error!(
            error = message,
            requests = self.active.len(),
            consecutive_failures = self.consecutive_failures,
            "engine step failed; engine marked unhealthy"
        );
        self.shared.healthy.store(false, Ordering::Release);
        for (_, active) in self.active.drain() {
            let _ = active.events.send(Event::Failed(message.to_string()));
        }
        let config = *self.scheduler.config();
        self.scheduler = Scheduler::new(config);
    }

    fn publish_stats(&self) {
        if let Ok(mut stats) = self.shared.stats.lock() {
            *stats = SchedulerStats {
                last_batch_size: self.last_batch_size,
                idle_releases: self.idle_releases,
                speculation: self.speculation,
                ..self.scheduler.stats()
            };
        }
        if let Ok(mut adapters) = self.shared.adapters.lock() {
            *adapters = self.adapter_stats();
        }
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}
