//! The first characters of a byte stream: where a limit counted in
//! characters cuts it.
//!
//! Every limit on text the layer reads or keeps of a body is in characters
//! (Unicode scalar values), as the Trodo wire cuts `input`/`output` by
//! characters, so a JSON body ([`Capture`](crate::capture::Capture)) and
//! an SSE event's data ([`SseDecoder`](crate::mcp::sse::SseDecoder)) are
//! read to the same window whatever their encoding. The bytes of `limit`
//! characters are at most `4 * limit`.

/// Counts the characters of a byte stream fed in pieces against a limit,
/// and says where the first one past it starts.
///
/// Characters are counted the way [`String::from_utf8_lossy`] decodes them:
/// a valid UTF-8 sequence is one character and so is every maximal invalid
/// subpart (which becomes one U+FFFD), so the bytes within the window decode
/// to exactly the characters counted here. A character split across pieces
/// is counted once, and never cut.
#[derive(Debug, Clone)]
pub(crate) struct CharWindow {
    /// The most characters in the window.
    limit: usize,
    /// Characters started so far (the last one may still be incomplete).
    chars: usize,
    /// Continuation bytes still expected by the last character.
    need: u8,
    /// Lowest byte allowed as the next continuation byte.
    lo: u8,
    /// Highest byte allowed as the next continuation byte.
    hi: u8,
    /// Whether a character past the limit started.
    passed: bool,
}

impl CharWindow {
    /// A window of the first `limit` characters.
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            limit,
            chars: 0,
            need: 0,
            lo: 0,
            hi: 0,
            passed: false,
        }
    }

    /// The most characters in the window.
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// True once the stream had more than `limit` characters.
    pub(crate) fn is_passed(&self) -> bool {
        self.passed
    }

    /// Characters counted so far, for tests.
    #[cfg(test)]
    pub(crate) fn chars(&self) -> usize {
        self.chars
    }

    /// Counts `bytes`, which follow what was counted, and returns how many
    /// of them are in the window: all, or those before the first character
    /// past the limit (the window is then passed, and takes nothing more).
    pub(crate) fn fit(&mut self, bytes: &[u8]) -> usize {
        if self.passed {
            return 0;
        }
        let mut at = 0;
        // The rest of a character begun before `bytes`.
        while self.need > 0 && at < bytes.len() {
            if !self.step(bytes[at]) {
                return at;
            }
            at += 1;
        }
        // A character takes at most 4 bytes, so the first one past the
        // limit starts within the next `4 * room + 1`: nothing after them
        // is read, however long `bytes` is.
        let room = self.limit - self.chars;
        let end = at
            .saturating_add(room.saturating_mul(4).saturating_add(1))
            .min(bytes.len());
        while at < end {
            // The longest valid run, found by the standard library's fast
            // validation, then the invalid subpart after it (or an
            // incomplete character at the end).
            let rest = &bytes[at..end];
            let (valid, invalid) = match std::str::from_utf8(rest) {
                Ok(_) => (rest.len(), 0),
                Err(e) => (
                    e.valid_up_to(),
                    e.error_len().unwrap_or(rest.len() - e.valid_up_to()),
                ),
            };
            if valid > 0 {
                match nth_char_start(&rest[..valid], self.limit - self.chars) {
                    Ok(cut) => {
                        self.chars = self.limit;
                        self.passed = true;
                        return at + cut;
                    }
                    Err(count) => self.chars += count,
                }
                // Whatever an invalid subpart before began is over.
                self.need = 0;
                at += valid;
            }
            for &b in &rest[valid..valid + invalid] {
                if !self.step(b) {
                    return at;
                }
                at += 1;
            }
        }
        debug_assert!(at == bytes.len(), "the window is passed within its bound");
        at
    }

    /// Counts one byte; false (and the window passed) when it starts a
    /// character past the limit.
    fn step(&mut self, b: u8) -> bool {
        if self.need > 0 && (self.lo..=self.hi).contains(&b) {
            self.need -= 1;
            (self.lo, self.hi) = (0x80, 0xBF);
            return true;
        }
        if self.chars == self.limit {
            self.passed = true;
            return false;
        }
        self.chars += 1;
        (self.need, self.lo, self.hi) = lead(b);
        true
    }
}

/// How many bytes of `bytes` are its first `limit` characters (all of
/// them, if it has no more), counted as [`CharWindow`] does.
pub(crate) fn prefix_len(bytes: &[u8], limit: usize) -> usize {
    // No more characters than bytes: a short text needs no counting.
    if bytes.len() <= limit {
        return bytes.len();
    }
    CharWindow::new(limit).fit(bytes)
}

/// In valid UTF-8 `text`: `Ok` with where its character `n` (counting
/// from 0) starts, if it has more than `n`; else `Err` with how many it
/// has. Counts leading bytes (all but continuation bytes) a block at a
/// time, which compiles to vector code; nothing is decoded.
fn nth_char_start(text: &[u8], n: usize) -> Result<usize, usize> {
    // At most 255, so that a block is counted in byte lanes.
    const BLOCK: usize = 128;
    let is_leading = |b: &u8| (*b as i8) >= -0x40;
    let mut seen = 0;
    for (i, block) in text.chunks(BLOCK).enumerate() {
        let count = usize::from(block.iter().fold(0u8, |n, b| n + u8::from(is_leading(b))));
        if seen + count > n {
            let (at, _) = (block.iter().enumerate())
                .filter(|(_, b)| is_leading(b))
                .nth(n - seen)
                .expect("the block holds character n");
            return Ok(i * BLOCK + at);
        }
        seen += count;
    }
    Err(seen)
}

/// For the first byte of a character: how many continuation bytes it expects
/// and the allowed range of the first of them (as in the UTF-8 table of
/// well-formed byte sequences). ASCII and invalid bytes expect none.
fn lead(b: u8) -> (u8, u8, u8) {
    match b {
        0xC2..=0xDF => (1, 0x80, 0xBF),
        0xE0 => (2, 0xA0, 0xBF),
        0xE1..=0xEC | 0xEE..=0xEF => (2, 0x80, 0xBF),
        0xED => (2, 0x80, 0x9F),
        0xF0 => (3, 0x90, 0xBF),
        0xF1..=0xF3 => (3, 0x80, 0xBF),
        0xF4 => (3, 0x80, 0x8F),
        _ => (0, 0, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes of the first `limit` characters of `bytes` fed in `pieces`
    /// (split at those offsets), and whether the window was passed.
    fn fit_split(bytes: &[u8], at: &[usize], limit: usize) -> (Vec<u8>, bool) {
        let mut window = CharWindow::new(limit);
        let mut kept = Vec::new();
        let mut start = 0;
        for end in at.iter().copied().chain([bytes.len()]) {
            let piece = &bytes[start..end];
            kept.extend_from_slice(&piece[..window.fit(piece)]);
            start = end;
        }
        (kept, window.is_passed())
    }

    #[test]
    fn a_character_split_across_pieces_is_counted_once() {
        let text = "a中b";
        for at in 0..=text.len() {
            let mut window = CharWindow::new(usize::MAX);
            window.fit(&text.as_bytes()[..at]);
            window.fit(&text.as_bytes()[at..]);
            assert_eq!(window.chars(), 3, "split at {at}");
            assert_eq!(fit_split(text.as_bytes(), &[at], 3), (text.into(), false));
            assert_eq!(fit_split(text.as_bytes(), &[at], 2), ("a中".into(), true));
        }
    }

    #[test]
    fn the_cut_is_at_the_first_character_past_the_limit() {
        let text = "中文".repeat(10);
        assert_eq!(prefix_len(text.as_bytes(), 20), 60, "exactly at the limit");
        assert_eq!(prefix_len(text.as_bytes(), 19), 57, "one over");
        assert_eq!(prefix_len(text.as_bytes(), 0), 0);
        assert_eq!(prefix_len(b"abc", 3), 3);
        let mut window = CharWindow::new(19);
        assert_eq!(window.fit(text.as_bytes()), 57);
        assert!(window.is_passed());
        assert_eq!(window.fit(b"x"), 0, "a passed window takes nothing more");
    }

    #[test]
    fn characters_are_counted_across_blocks() {
        let text = "aé中😀".repeat(200);
        for n in [0, 1, 255, 256, 257, 511, 799] {
            let expected: String = text.chars().take(n).collect();
            assert_eq!(
                nth_char_start(text.as_bytes(), n),
                Ok(expected.len()),
                "{n}"
            );
            assert_eq!(prefix_len(text.as_bytes(), n), expected.len(), "{n}");
        }
        assert_eq!(nth_char_start(text.as_bytes(), 800), Err(800));
        assert_eq!(prefix_len(text.as_bytes(), 800), text.len());
    }

    #[test]
    fn only_the_bytes_that_can_reach_the_limit_are_read() {
        // Invalid UTF-8 far past the cut does not change it.
        let mut bytes = "é".repeat(10).into_bytes();
        bytes.extend_from_slice(&[0xFF; 100]);
        assert_eq!(prefix_len(&bytes, 5), 10);
        assert_eq!(prefix_len(&bytes, 12), 22);
    }

    #[test]
    fn counts_match_lossy_decoding_on_arbitrary_bytes() {
        const POOL: [u8; 16] = [
            b'a', 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC2, 0xE0, 0xED, 0xEF, 0xF0, 0xF4,
            0xF5, 0xFF,
        ];
        let mut seed: u32 = 0x1234_5678;
        for _ in 0..2000 {
            let mut bytes = Vec::new();
            for _ in 0..12 {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                bytes.push(POOL[(seed >> 28) as usize]);
            }
            let lossy = String::from_utf8_lossy(&bytes).into_owned();
            let total = lossy.chars().count();
            let mut window = CharWindow::new(usize::MAX);
            window.fit(&bytes);
            assert_eq!(window.chars(), total, "{bytes:x?}");
            let split = (seed >> 8) as usize % (bytes.len() + 1);
            for limit in 0..=total {
                let expected: String = lossy.chars().take(limit).collect();
                for at in [&[][..], &[split]] {
                    let (kept, passed) = fit_split(&bytes, at, limit);
                    let text = String::from_utf8_lossy(&kept);
                    assert_eq!(text, expected, "{bytes:x?} limit {limit} split {at:?}");
                    assert_eq!(passed, limit < total, "{bytes:x?} limit {limit}");
                }
            }
        }
    }
}
