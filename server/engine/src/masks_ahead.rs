//! Grammar masks computed while the forward pass runs. A sequence's mask depends only on the
//! tokens it has so far, not on this step's logits, so it need not wait for them: on a GPU the
//! CPU is idle during the forward pass, and on a CPU the masks take a core's share of it.

use crate::constraint::{AllowedTokens, Constraint};

/// One sequence's constraint, lent for the step, and the mask computed for it.
pub(crate) struct Pending<K> {
    pub key: K,
    pub constraint: Constraint,
    /// `None` when the mask thread did not get to it (it panicked): computed when sampling.
    pub allowed: Option<Result<AllowedTokens, String>>,
}

/// Runs `forward` on this thread while another computes the masks of `pending`; returns what
/// `forward` returned once both are done.
pub(crate) fn beside_forward<K: Send, T>(
    pending: &mut [Pending<K>],
    forward: impl FnOnce() -> T,
) -> T {
    if pending.is_empty() {
        return forward();
    }
    std::thread::scope(|scope| {
        let masks = scope.spawn(|| {
            for p in pending.iter_mut() {
                p.allowed = Some(p.constraint.allowed());
            }
        });
        let result = forward();
        // A panic there leaves the masks not yet computed at `None`.
        let _ = masks.join();
        result
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::constraint::tests::constraints;
    use crate::constraint::Grammar;

    /// Masks computed ahead, beside a forward pass, are the masks computed after it.
    #[test]
    fn masks_computed_ahead_equal_masks_computed_after() {
        let constraints = constraints();
        let grammars = [
            Grammar::Regex("[0-9]{2}-[a-z]+".into()),
            Grammar::json(
                serde_json::json!({"type": "object", "properties": {"a": {"type": "integer"}}}),
                false,
            ),
        ];
        let mut pending: Vec<Pending<usize>> = grammars
            .iter()
            .enumerate()
            .map(|(key, g)| Pending {
                key,
                constraint: constraints
                    .compile(g.clone())
                    .unwrap_or_else(|e| panic!("{e}")),
                allowed: None,
            })
            .collect();
        let answer = beside_forward(&mut pending, || 42);
        assert_eq!(answer, 42);
        for (p, grammar) in pending.iter_mut().zip(&grammars) {
            let mut ahead = vec![0.0f32; 512];
            match p.allowed.take() {
                Some(Ok(allowed)) => allowed.apply(&mut ahead),
                other => panic!("no mask ahead: {:?}", other.map(|r| r.err())),
            }
            let mut fresh = constraints
                .compile(grammar.clone())
                .unwrap_or_else(|e| panic!("{e}"));
            let mut after = vec![0.0f32; 512];
            fresh.mask(&mut after).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(ahead, after, "{grammar:?}");
            assert!(ahead.iter().any(|v| v.is_finite()));
        }
    }
}
