//! The portable forward pass copies a fixed handful of tensors to the device per step (token
//! ids, positions, the cache-write slots, the attention's slot or block tables, the logit
//! rows), never one per layer or per sequence: counted on a mock `Uploads`.

mod common;

use common::{tiny_model_with, Paged, TestResult};
use lantern_kernels::CountingUploads;
use lantern_models::{Architecture, KernelPath, LogitsWanted, SequenceStep};

/// Copies made by a prefill step (5 tokens per sequence) and a decode step of `sequences`
/// sequences on the tiny Llama cut to `layers` layers (it has 2).
fn uploads_per_step(layers: usize, sequences: usize) -> TestResult<(usize, usize)> {
    let (_dir, mut model) = tiny_model_with(Architecture::Llama, KernelPath::Portable, &|_, c| {
        c["num_hidden_layers"] = layers.into();
        Ok(())
    })?;
    let decoder = &mut model.decoder;
    let mut paged = Paged::new(decoder, 64, 4)?;
    let ids: Vec<usize> = (0..sequences).map(|_| paged.add_sequence()).collect();
    let mut counts = Vec::new();
    for tokens in [&[1u32, 2, 3, 4, 5][..], &[6]] {
        let steps: Vec<SequenceStep> = ids
            .iter()
            .map(|&s| paged.step(s, tokens, LogitsWanted::Last))
            .collect::<TestResult<_>>()?;
        let uploads = CountingUploads::default();
        decoder.forward_with_uploads(&steps, &uploads)?;
        counts.push(uploads.count());
    }
    Ok((counts[0], counts[1]))
}

#[test]
fn uploads_per_step_do_not_grow_with_layers_or_sequences() -> TestResult {
    let base = uploads_per_step(1, 1)?;
    for (layers, sequences) in [(2, 1), (1, 6), (2, 6)] {
        assert_eq!(
            uploads_per_step(layers, sequences)?,
            base,
            "{layers} layers, {sequences} sequences"
        );
    }
    // Token ids, positions, write slots, context slots, logit rows.
    assert_eq!(base, (5, 5));
    Ok(())
}
