//! An incremental reader of Server-Sent Events as the client side sees them: bytes arrive in
//! arbitrary pieces (a network chunk may end mid-line or mid-UTF-8 character) and come out as
//! the `data` payloads of complete events, in order. Follows the WHATWG event-stream rules we
//! need: lines end in LF, CRLF or CR; `data:` lines of one event are joined with LF; an empty
//! line ends the event; comments (`:`) and other fields are ignored.

#[derive(Debug, Default)]
pub struct SseReader {
    /// Bytes of the line still being received.
    line: Vec<u8>,
    /// `data` lines of the event still being received.
    data: Option<String>,
    /// The last byte seen was a CR, so a following LF belongs to the same line end.
    after_cr: bool,
}

impl SseReader {
    /// Feeds `bytes` and returns the data of every event they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut events = Vec::new();
        for &byte in bytes {
            let after_cr = std::mem::replace(&mut self.after_cr, byte == b'\r');
            match byte {
                b'\n' if after_cr => {}
                b'\n' | b'\r' => {
                    let line = std::mem::take(&mut self.line);
                    if let Some(data) = self.end_line(&line) {
                        events.push(data);
                    }
                }
                _ => self.line.push(byte),
            }
        }
        events
    }

    /// The data of an event the stream ended without a blank line after (servers that close
    /// the connection right after their last `data:` line).
    pub fn finish(&mut self) -> Option<String> {
        let line = std::mem::take(&mut self.line);
        let pending = self.end_line(&line);
        pending.or_else(|| self.data.take())
    }

    fn end_line(&mut self, line: &[u8]) -> Option<String> {
        if line.is_empty() {
            return self.data.take();
        }
        let line = String::from_utf8_lossy(line);
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line.as_ref(), ""),
        };
        if field == "data" {
            match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = ": keep-alive\r\n\r\ndata: {\"a\":1}\n\nevent: x\ndata: one\ndata: two\r\n\r\ndata:[DONE]\n\n";

    #[test]
    fn events_come_out_whole_however_the_bytes_are_split() {
        let expected = vec!["{\"a\":1}", "one\ntwo", "[DONE]"];
        for piece in 1..=STREAM.len() {
            let mut reader = SseReader::default();
            let mut got = Vec::new();
            for chunk in STREAM.as_bytes().chunks(piece) {
                got.extend(reader.push(chunk));
            }
            assert_eq!(got, expected, "split every {piece} bytes");
            assert_eq!(reader.finish(), None);
        }
    }

    #[test]
    fn a_last_event_without_its_blank_line_is_still_read() {
        let mut reader = SseReader::default();
        assert!(reader.push(b"data: last").is_empty());
        assert_eq!(reader.finish().as_deref(), Some("last"));
    }

    #[test]
    fn multibyte_characters_split_across_chunks_survive() {
        let text = "data: caf\u{e9} \u{1F600}\n\n".as_bytes();
        let mut reader = SseReader::default();
        let mut got = Vec::new();
        for byte in text {
            got.extend(reader.push(std::slice::from_ref(byte)));
        }
        assert_eq!(got, vec!["caf\u{e9} \u{1F600}".to_string()]);
    }
}
