//! `StopMatcher`: stop sequences at the string level. Text that might be the start of a stop
//! sequence is held back until it is known not to be one, so a stop sequence split across
//! tokens is still caught and never reaches the client.

/// What to do with newly generated text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopOutcome {
    /// Send this text (maybe empty: some is being held back).
    Continue(String),
    /// A stop sequence matched: send this text (what preceded the match), then finish.
    Stop(String),
}

#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            held: String::new(),
        }
    }

    pub fn push(&mut self, text: &str) -> StopOutcome {
        if self.stops.is_empty() {
            return StopOutcome::Continue(text.to_string());
        }
        self.held.push_str(text);
        let first_match = self
            .stops
            .iter()
            .filter_map(|stop| self.held.find(stop.as_str()))
            .min();
        if let Some(at) = first_match {
            let before = self.held[..at].to_string();
            self.held.clear();
            return StopOutcome::Stop(before);
        }
        // Keep the longest tail that is a proper prefix of some stop sequence.
        let keep = self
            .held
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| {
                self.stops
                    .iter()
                    .any(|stop| stop.starts_with(&self.held[i..]))
            })
            .unwrap_or(self.held.len());
        let ready = self.held[..keep].to_string();
        self.held.drain(..keep);
        StopOutcome::Continue(ready)
    }

    /// Text held back when generation ends for another reason: it was not a stop after all.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_split_across_pieces_is_caught_and_excluded() {
        let mut m = StopMatcher::new(vec!["</end>".into()]);
        assert_eq!(m.push("Hello </"), StopOutcome::Continue("Hello ".into()));
        assert_eq!(m.push("en"), StopOutcome::Continue(String::new()));
        assert_eq!(m.push("d> more"), StopOutcome::Stop(String::new()));
    }

    #[test]
    fn a_false_start_is_released() {
        let mut m = StopMatcher::new(vec!["STOP".into()]);
        assert_eq!(m.push("ST"), StopOutcome::Continue(String::new()));
        assert_eq!(m.push("AR"), StopOutcome::Continue("STAR".into()));
        assert_eq!(m.push("S"), StopOutcome::Continue(String::new()));
        assert_eq!(m.flush(), "S");
    }

    #[test]
    fn text_before_the_match_in_the_same_piece_is_kept() {
        let mut m = StopMatcher::new(vec!["\n\n".into(), "###".into()]);
        assert_eq!(m.push("a\n"), StopOutcome::Continue("a".into()));
        assert_eq!(m.push("b###c"), StopOutcome::Stop("\nb".into()));
    }

    #[test]
    fn multibyte_text_is_cut_on_character_boundaries() {
        let mut m = StopMatcher::new(vec!["é!".into()]);
        assert_eq!(m.push("café"), StopOutcome::Continue("caf".into()));
        assert_eq!(m.push("?"), StopOutcome::Continue("é?".into()));
    }
}
