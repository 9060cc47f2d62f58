//! The identifiers the server makes: request ids (`X-Request-Id`), response ids (`chatcmpl-`,
//! `cmpl-`, `msg_`) and tool-call ids (`call_`, `toolu_`). One maker: 128 random bits in hex
//! behind the prefix each API spells, unique across processes and restarts without
//! coordination.

use rand::Rng;

/// `prefix` followed by 32 random hex digits.
pub fn fresh_id(prefix: &str) -> String {
    let bits: u128 = rand::rng().random();
    format!("{prefix}{bits:032x}")
}

#[cfg(test)]
mod tests {
    use super::fresh_id;

    #[test]
    fn ids_keep_their_prefix_and_differ() {
        let (a, b) = (fresh_id("call_"), fresh_id("call_"));
        assert!(a.starts_with("call_") && a.len() == 5 + 32, "{a}");
        assert_ne!(a, b);
        assert!(a[5..].bytes().all(|c| c.is_ascii_hexdigit()));
    }
}
