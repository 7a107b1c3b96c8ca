//! Turning raw terminal output into clean text: escape sequences removed
//! (unless raw output is asked for) and UTF-8 decoded across chunk
//! boundaries.

/// Removes ANSI/VT escape sequences (CSI, OSC, two-byte escapes) and BEL.
/// Stateful, so a sequence split across chunks is still removed. A sequence
/// never hides more than itself: a line feed ends an unterminated CSI or
/// OSC (and is kept), CAN and SUB cancel any sequence (as on a VT100), and
/// an OSC longer than [`MAX_OSC_BYTES`] is given up, so the output after it
/// shows.
#[derive(Debug, Default)]
pub struct AnsiStripper {
    state: State,
    /// Bytes of the OSC in progress.
    osc_len: usize,
}

/// Longest OSC payload removed (titles and hyperlinks are far shorter).
pub const MAX_OSC_BYTES: usize = 4096;

#[derive(Debug, Default, Clone, Copy, PartialEq)]
enum State {
    #[default]
    Normal,
    Esc,
    EscIntermediate,
    Csi,
    Osc,
    OscEsc,
}

impl AnsiStripper {
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        for &b in input {
            if self.state == State::Osc || self.state == State::OscEsc {
                self.osc_len += 1;
                if self.osc_len > MAX_OSC_BYTES {
                    self.state = State::Normal;
                }
            } else {
                self.osc_len = 0;
            }
            self.state = match (self.state, b) {
                (State::Csi | State::Osc | State::OscEsc, b'\n') => {
                    out.push(b'\n');
                    State::Normal
                }
                (State::Normal, _) if b != 0x1b && b != 0x07 => {
                    out.push(b);
                    State::Normal
                }
                (_, 0x18 | 0x1a) => State::Normal,
                (State::Normal, 0x1b) => State::Esc,
                (State::Normal, 0x07) => State::Normal,
                (State::Normal, _) => {
                    out.push(b);
                    State::Normal
                }
                (State::Esc, b'[') => State::Csi,
                (State::Esc, b']') => State::Osc,
                (State::Esc, 0x20..=0x2f) => State::EscIntermediate,
                (State::Esc, _) => State::Normal,
                (State::EscIntermediate, 0x20..=0x2f) => State::EscIntermediate,
                (State::EscIntermediate, _) => State::Normal,
                (State::Csi, 0x40..=0x7e) => State::Normal,
                (State::Csi, _) => State::Csi,
                (State::Osc, 0x07) => State::Normal,
                (State::Osc, 0x1b) => State::OscEsc,
                (State::Osc, _) => State::Osc,
                (State::OscEsc, b'\\') => State::Normal,
                (State::OscEsc, _) => State::Osc,
            };
        }
    }
}

/// Decodes UTF-8 across chunk boundaries: an incomplete trailing sequence
/// is kept for the next chunk; invalid bytes become U+FFFD.
#[derive(Debug, Default)]
pub struct Utf8Decoder {
    carry: Vec<u8>,
}

impl Utf8Decoder {
    pub fn decode(&mut self, bytes: &[u8]) -> String {
        let mut buf = std::mem::take(&mut self.carry);
        buf.extend_from_slice(bytes);
        let keep = incomplete_tail(&buf);
        self.carry = buf.split_off(buf.len() - keep);
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// Whatever is left at the end of the stream.
    pub fn finish(&mut self) -> String {
        let rest = std::mem::take(&mut self.carry);
        String::from_utf8_lossy(&rest).into_owned()
    }
}

/// Length of an incomplete (but so far valid) UTF-8 sequence at the end.
fn incomplete_tail(b: &[u8]) -> usize {
    for back in 1..=3.min(b.len()) {
        let c = b[b.len() - back];
        if c & 0xc0 == 0x80 {
            continue; // continuation byte: look further back
        }
        let need = match c {
            0xc0..=0xdf => 2,
            0xe0..=0xef => 3,
            0xf0..=0xf7 => 4,
            _ => return 0,
        };
        return if need > back { back } else { 0 };
    }
    0
}

/// Output cleaning for one exec.
#[derive(Debug)]
pub struct OutputCleaner {
    strip: Option<AnsiStripper>,
    utf8: Utf8Decoder,
}

impl OutputCleaner {
    pub fn new(raw: bool) -> Self {
        OutputCleaner {
            strip: (!raw).then(AnsiStripper::default),
            utf8: Utf8Decoder::default(),
        }
    }

    pub fn push(&mut self, data: &[u8]) -> String {
        match &mut self.strip {
            Some(s) => {
                let mut out = Vec::with_capacity(data.len());
                s.feed(data, &mut out);
                self.utf8.decode(&out)
            }
            None => self.utf8.decode(data),
        }
    }

    pub fn finish(&mut self) -> String {
        self.utf8.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strip(chunks: &[&[u8]]) -> String {
        let mut c = OutputCleaner::new(false);
        let mut s: String = chunks.iter().map(|ch| c.push(ch)).collect();
        s.push_str(&c.finish());
        s
    }

    #[test]
    fn removes_colors_cursor_moves_and_titles() {
        assert_eq!(
            strip(&[b"\x1b[1;31mred\x1b[0m plain\x1b[2K\x1b]0;title\x07!"]),
            "red plain!"
        );
        assert_eq!(strip(&[b"\x1b(Bx\x1b=y\x1b]8;;u\x1b\\z"]), "xyz");
    }

    #[test]
    fn sequences_and_utf8_split_across_chunks() {
        assert_eq!(strip(&[b"a\x1b[3", b"1mb\xe2\x82", b"\xac c"]), "ab€ c");
    }

    #[test]
    fn raw_keeps_escapes() {
        let mut c = OutputCleaner::new(true);
        assert_eq!(c.push(b"\x1b[31mx"), "\x1b[31mx");
    }

    #[test]
    fn an_unterminated_sequence_never_hides_the_lines_after_it() {
        // An OSC that never ends: the next line shows.
        assert_eq!(strip(&[b"a\x1b]0;title\nline 2\n"]), "a\nline 2\n");
        assert_eq!(strip(&[b"x\x1b[12\nnext"]), "x\nnext");
        // CAN and SUB cancel a sequence.
        assert_eq!(strip(&[b"\x1b]8;;u\x18seen"]), "seen");
        assert_eq!(strip(&[b"\x1b[1\x1aseen"]), "seen");
        // An OSC without a line feed is given up after its limit.
        let mut long = b"\x1b]0;".to_vec();
        long.extend(std::iter::repeat_n(b'x', MAX_OSC_BYTES + 10));
        long.extend_from_slice(b"\x07after");
        let out = strip(&[&long]);
        assert!(
            out.ends_with("after"),
            "{}",
            &out[out.len().saturating_sub(20)..]
        );
        assert!(
            out.len() < 100,
            "only the tail past the limit shows: {}",
            out.len()
        );
        // Split across chunks, the limit still counts.
        let (a, b) = long.split_at(MAX_OSC_BYTES / 2);
        assert!(strip(&[a, b]).ends_with("after"));
    }

    #[test]
    fn invalid_bytes_become_replacement_chars() {
        assert_eq!(strip(&[b"a\xffb"]), "a\u{fffd}b");
        assert_eq!(strip(&[b"end\xe2\x82"]), "end\u{fffd}");
    }
}
