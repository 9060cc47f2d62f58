//! Speculative decoding by prompt lookup (`--speculate N`): the tokens that followed the
//! last occurrence of a sequence's most recent n-gram (in its prompt or its own output) are
//! proposed as its next ones, the model scores them all in one step, and each stands only if
//! it is the token the sequence would have chosen there anyway (worker.rs). Input-grounded
//! answers (edits, summaries, code changes) repeat their prompt, so runs of proposals stand,
//! and a sequence moves several tokens for one read of the weights.

/// The most tokens a draft may propose (`--speculate` is capped here).
pub const MAX_SPECULATE: usize = 16;

/// Longest n-gram looked up first; shorter ones when it is not found.
const MAX_NGRAM: usize = 3;
/// Speculation stops when more sequences than this decode together: the step is no longer
/// bound by reading the weights, and proposals would only add work.
pub const MAX_SPECULATING_BATCH: usize = 4;

/// Up to `max` tokens to follow `tokens`: what followed the latest earlier occurrence of its
/// last `n` tokens, for the largest `n <= 3` that has one. Empty when nothing matches.
pub fn propose(tokens: &[u32], max: usize) -> Vec<u32> {
    if max == 0 {
        return Vec::new();
    }
    for n in (1..=MAX_NGRAM.min(tokens.len().saturating_sub(1))).rev() {
        let key = &tokens[tokens.len() - n..];
        // Latest earlier occurrence: windows ending before the key itself.
        let found = (0..tokens.len() - n)
            .rev()
            .find(|&start| &tokens[start..start + n] == key);
        if let Some(start) = found {
            let from = start + n;
            let to = (from + max).min(tokens.len());
            return tokens[from..to].to_vec();
        }
    }
    Vec::new()
}

/// Weight of a draft's outcome in a sequence's moving acceptance.
pub const ACCEPTANCE_SMOOTHING: f64 = 0.3;
/// What a sequence's acceptance regains each step it does not propose (a retry about every
/// twenty steps after a run of rejections).
pub const ACCEPTANCE_RECOVERY: f64 = 0.02;

/// Whether proposing for a sequence is worth its cost, by measured step costs (`costs`: a
/// decode step's seconds, and each added token's). A step carrying `decoding` sequences makes
/// `decoding` tokens in `step` seconds; `k` proposals add `k · per_token` and are expected to
/// add `acceptance · k` tokens: worth it while `acceptance · step > decoding · per_token`,
/// i.e. while the step is bound by reading the weights rather than by computing. Without
/// measurements yet, yes.
pub fn pays(acceptance: f64, decoding: usize, costs: Option<(f64, f64)>) -> bool {
    costs.is_none_or(|(step, per_token)| acceptance * step > decoding as f64 * per_token)
}

/// The proposal length for a sequence when `decoding` sequences decode in the step: the whole
/// `speculate` alone, half of it with company, none past [`MAX_SPECULATING_BATCH`].
pub fn proposal_length(speculate: usize, decoding: usize) -> usize {
    let speculate = speculate.min(MAX_SPECULATE);
    match decoding {
        0 | 1 => speculate,
        d if d <= MAX_SPECULATING_BATCH => speculate.div_ceil(2),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_recent_ngram_proposes_what_followed_it() {
        // "a b c d e ... a b c" proposes "d e".
        let tokens = [1, 2, 3, 4, 5, 9, 1, 2, 3];
        assert_eq!(propose(&tokens, 2), vec![4, 5]);
        assert_eq!(propose(&tokens, 10), vec![4, 5, 9, 1, 2, 3]);
        // The latest occurrence wins.
        let tokens = [7, 8, 1, 7, 8, 2, 7, 8];
        assert_eq!(propose(&tokens, 1), vec![2]);
        // Shorter n-grams when the longer ones are new.
        let tokens = [5, 6, 4, 3, 6];
        assert_eq!(propose(&tokens, 3), vec![4, 3, 6]);
        assert!(propose(&[1, 2, 3], 4).is_empty());
        assert!(propose(&[], 4).is_empty());
        assert!(propose(&[1, 1], 0).is_empty());
    }

    #[test]
    fn speculation_pays_while_steps_are_bound_by_reading_weights() {
        // A 20 ms decode step; each added token 0.5 ms.
        let costs = Some((0.020, 0.0005));
        assert!(pays(0.8, 1, costs));
        assert!(pays(0.8, 16, costs));
        // Compute-bound: 40 sequences, or a sequence whose proposals seldom stand.
        assert!(!pays(0.8, 40, costs));
        assert!(!pays(0.02, 1, costs));
        assert!(pays(0.0, 1, None));
    }

    #[test]
    fn proposals_shrink_as_the_batch_grows() {
        assert_eq!(proposal_length(4, 1), 4);
        assert_eq!(proposal_length(4, 3), 2);
        assert_eq!(proposal_length(4, MAX_SPECULATING_BATCH + 1), 0);
        assert_eq!(proposal_length(0, 1), 0);
    }
}
