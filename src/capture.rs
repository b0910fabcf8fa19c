//! A bounded text capture of a byte stream (a request or response body).
//!
//! Limits are in characters (Unicode scalar values), as the Trodo wire cuts
//! `input`/`output` by characters. Only the bytes of the first `limit_chars`
//! characters are kept, so memory stays bounded (at most `4 * limit_chars`
//! bytes) whatever the size of the stream; the rest is only counted.

use crate::char_window::CharWindow;

/// Collects the first `limit` characters of a byte stream as text, counting the rest.
///
/// Characters are counted by a [`CharWindow`] (as [`String::from_utf8_lossy`]
/// decodes them), so [`Capture::into_text`] holds exactly the characters
/// counted.
#[derive(Debug, Clone)]
pub(crate) struct Capture {
    /// Where the limit cuts the stream.
    window: CharWindow,
    /// The kept bytes: a prefix of the stream.
    kept: Vec<u8>,
    /// Bytes at the end of `kept` not counted yet: while the bytes seen fit
    /// in the limit, so do their characters, and nothing is counted.
    uncounted: usize,
    /// Total bytes seen.
    total: u64,
    /// Whether the stream was seen to its end.
    ended: bool,
}

impl Capture {
    /// A capture that keeps at most `limit_chars` characters.
    pub(crate) fn new(limit_chars: usize) -> Self {
        Self {
            window: CharWindow::new(limit_chars),
            kept: Vec::new(),
            uncounted: 0,
            total: 0,
            ended: false,
        }
    }

    /// Appends a chunk. Never stores more than the bytes of the first
    /// `limit_chars` characters; once the limit is passed, only counts.
    ///
    /// A character split across chunks is completed by the next chunk.
    pub(crate) fn push(&mut self, chunk: &[u8]) {
        self.total += chunk.len() as u64;
        if self.window.is_passed() {
            return;
        }
        // The common case, a body shorter in bytes than the limit in
        // characters: kept as it is, counted only if more comes.
        if self.kept.len() + chunk.len() <= self.window.limit() {
            self.reserve(chunk.len());
            self.kept.extend_from_slice(chunk);
            self.uncounted += chunk.len();
            return;
        }
        self.count_kept();
        let keep = self.window.fit(chunk);
        self.reserve(keep);
        self.kept.extend_from_slice(&chunk[..keep]);
    }

    /// Empties the capture for another stream (with the same limit),
    /// keeping its room for it unless that is more than `max_room` bytes.
    pub(crate) fn restart(&mut self, max_room: usize) {
        self.kept.clear();
        if self.kept.capacity() > max_room {
            self.kept = Vec::new();
        }
        self.window = CharWindow::new(self.window.limit());
        self.uncounted = 0;
        self.total = 0;
        self.ended = false;
    }

    /// Counts the characters of the kept bytes not counted yet.
    fn count_kept(&mut self) {
        if self.uncounted == 0 {
            return;
        }
        let uncounted = &self.kept[self.kept.len() - self.uncounted..];
        let keep = self.window.fit(uncounted);
        debug_assert_eq!(keep, self.uncounted, "bytes within the limit are kept");
        self.uncounted = 0;
    }

    /// The most characters kept.
    pub(crate) fn limit(&self) -> usize {
        self.window.limit()
    }

    /// Total bytes seen (including those not kept).
    pub(crate) fn total_bytes(&self) -> u64 {
        self.total
    }

    /// The stream is over: nothing more comes.
    pub(crate) fn end(&mut self) {
        self.ended = true;
    }

    /// Whether the stream was seen to its end.
    pub(crate) fn is_ended(&self) -> bool {
        self.ended
    }

    /// True when bytes were dropped because of the limit.
    pub(crate) fn is_truncated(&self) -> bool {
        self.window.is_passed()
    }

    /// The kept bytes (a prefix of the stream), for JSON parsing when not truncated.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.kept
    }

    /// The captured text: valid UTF-8 is kept as is; invalid UTF-8 is replaced lossily
    /// (U+FFFD). At most `limit_chars` characters, cut on a character boundary.
    ///
    /// Valid UTF-8 (the common case) becomes the text without a copy.
    /// Characters are counted as the lossy decoding makes them, so the text
    /// has at most `limit_chars` without cutting it again.
    pub(crate) fn into_text(self) -> String {
        let mut text = text_of(self.kept);
        // A body that came in several chunks may have left room to spare.
        if text.capacity() > text.len() + text.len() / 4 {
            text.shrink_to_fit();
        }
        text
    }

    /// [`into_text`](Self::into_text) of the capture so far, for tests.
    #[cfg(test)]
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.kept).into_owned()
    }

    /// The room `kept` holds, for tests.
    #[cfg(test)]
    pub(crate) fn room(&self) -> usize {
        self.kept.capacity()
    }

    /// Grows `kept` for `additional` bytes, amortised but never past the
    /// most bytes `limit` characters can take.
    fn reserve(&mut self, additional: usize) {
        let needed = self.kept.len() + additional;
        if needed <= self.kept.capacity() {
            return;
        }
        let target = (self.kept.capacity() * 2)
            .min(self.window.limit().saturating_mul(4))
            .max(needed);
        self.kept.reserve_exact(target - self.kept.len());
    }
}

/// `bytes` as text: as they are when valid UTF-8 (no copy), else decoded
/// lossily (each invalid subpart becomes one U+FFFD).
pub(crate) fn text_of(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes)
        .unwrap_or_else(|invalid| String::from_utf8_lossy(invalid.as_bytes()).into_owned())
}

/// Cuts `s` to at most `max_chars` characters on a char boundary; returns
/// `(text, was_cut)`. The text is a prefix of `s` (borrowed, no copy); call
/// `.to_owned()` for a `String`.
pub(crate) fn truncate_chars(s: &str, max_chars: usize) -> (&str, bool) {
    if s.len() <= max_chars {
        return (s, false);
    }
    match s.char_indices().nth(max_chars) {
        Some((at, _)) => (&s[..at], true),
        None => (s, false),
    }
}

/// Cuts `text` in place to at most `max_chars` characters, and frees
/// what it no longer needs (queues weigh a text by its length); returns
/// whether it was cut.
pub(crate) fn cut_to_chars(text: &mut String, max_chars: usize) -> bool {
    let (kept, cut) = truncate_chars(text, max_chars);
    let len = kept.len();
    if cut {
        text.truncate(len);
        text.shrink_to_fit();
    }
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_text_gives_back_the_room_it_no_longer_needs() {
        let mut text = "é".repeat(100_000);
        assert!(cut_to_chars(&mut text, 10));
        assert_eq!(text, "é".repeat(10));
        assert!(text.capacity() < 1_000, "{}", text.capacity());
        let mut short = String::with_capacity(64);
        short.push_str("short");
        assert!(!cut_to_chars(&mut short, 10));
        assert_eq!(short.capacity(), 64, "an uncut text is left alone");
    }

    #[test]
    fn ascii_under_the_limit_is_kept_whole() {
        let mut c = Capture::new(10);
        c.push(b"hello");
        c.push(b" you");
        assert_eq!(c.text(), "hello you");
        assert_eq!(c.bytes(), b"hello you");
        assert_eq!(c.total_bytes(), 9);
        assert!(!c.is_truncated());
    }

    #[test]
    fn ascii_exactly_at_the_limit_is_not_truncated() {
        let mut c = Capture::new(5);
        c.push(b"hel");
        c.push(b"lo");
        c.push(b"");
        assert_eq!(c.text(), "hello");
        assert_eq!(c.total_bytes(), 5);
        assert!(!c.is_truncated());
    }

    #[test]
    fn ascii_over_the_limit_is_cut_and_counted() {
        let mut c = Capture::new(5);
        c.push(b"hel");
        c.push(b"lo world");
        c.push(b"!!");
        assert_eq!(c.text(), "hello");
        assert_eq!(c.bytes(), b"hello");
        assert_eq!(c.total_bytes(), 13);
        assert!(c.is_truncated());
    }

    #[test]
    fn zero_limit_keeps_nothing() {
        let mut c = Capture::new(0);
        assert!(!c.is_truncated());
        c.push(b"x");
        assert_eq!(c.text(), "");
        assert_eq!(c.bytes(), b"");
        assert_eq!(c.total_bytes(), 1);
        assert!(c.is_truncated());
    }

    #[test]
    fn multi_byte_chars_are_cut_on_a_boundary() {
        // "é" is 2 bytes, "😀" is 4 bytes.
        let mut c = Capture::new(3);
        c.push("aé😀b".as_bytes());
        assert_eq!(c.text(), "aé😀");
        assert_eq!(c.bytes(), "aé😀".as_bytes());
        assert_eq!(c.bytes().len(), 7);
        assert_eq!(c.total_bytes(), 8);
        assert!(c.is_truncated());
    }

    #[test]
    fn emoji_split_over_two_pushes_is_completed() {
        let emoji = "😀".as_bytes();
        let mut c = Capture::new(2);
        c.push(b"a");
        c.push(&emoji[..2]);
        assert_eq!(c.bytes(), &[b'a', emoji[0], emoji[1]]);
        assert!(!c.is_truncated());
        c.push(&emoji[2..]);
        assert_eq!(c.text(), "a😀");
        assert!(!c.is_truncated());
        c.push("é".as_bytes());
        assert_eq!(c.text(), "a😀");
        assert_eq!(c.bytes().len(), 5);
        assert_eq!(c.total_bytes(), 7);
        assert!(c.is_truncated());
    }

    #[test]
    fn every_split_of_a_multi_byte_text_gives_the_same_capture() {
        let text = "é😀x€";
        let bytes = text.as_bytes();
        for limit in 0..=5 {
            let expected: String = text.chars().take(limit).collect();
            for at in 0..=bytes.len() {
                let mut c = Capture::new(limit);
                c.push(&bytes[..at]);
                c.push(&bytes[at..]);
                assert_eq!(c.text(), expected, "limit {limit}, split at {at}");
                assert_eq!(c.bytes(), expected.as_bytes());
                assert_eq!(c.is_truncated(), limit < 4);
                assert_eq!(c.total_bytes(), 10);
            }
        }
    }

    #[test]
    fn invalid_utf8_is_replaced_lossily() {
        let mut c = Capture::new(10);
        c.push(b"a\xFFb\xE2\x82");
        c.push(b"c");
        assert_eq!(c.text(), "a\u{FFFD}b\u{FFFD}c");
        assert_eq!(c.bytes(), b"a\xFFb\xE2\x82c");
        assert!(!c.is_truncated());
    }

    #[test]
    fn into_text_keeps_valid_bytes_without_a_copy_and_replaces_invalid_ones() {
        let mut valid = Capture::new(64);
        valid.push("héllo".as_bytes());
        let kept = valid.bytes().as_ptr();
        let text = valid.into_text();
        assert_eq!(text, "héllo");
        assert_eq!(text.as_ptr(), kept, "the kept bytes became the text");

        // An invalid byte is one U+FFFD and one of the `limit` characters.
        let mut invalid = Capture::new(3);
        invalid.push(b"a\xFFb\xE2\x82");
        assert_eq!(invalid.text(), "a\u{FFFD}b");
        assert_eq!(invalid.into_text(), "a\u{FFFD}b");
    }

    #[test]
    fn invalid_bytes_count_as_one_character_each() {
        // Each stray continuation byte is one U+FFFD.
        let mut c = Capture::new(3);
        c.push(&[0x80; 100]);
        assert_eq!(c.text(), "\u{FFFD}\u{FFFD}\u{FFFD}");
        assert_eq!(c.bytes(), &[0x80; 3]);
        assert_eq!(c.total_bytes(), 100);
        assert!(c.is_truncated());
    }

    #[test]
    fn invalid_second_bytes_start_a_new_character() {
        // 0xE0 0x80 is not a valid start: two replacement characters.
        let mut c = Capture::new(2);
        c.push(b"\xE0\x80z");
        assert_eq!(c.text(), "\u{FFFD}\u{FFFD}");
        assert_eq!(c.bytes(), b"\xE0\x80");
        assert!(c.is_truncated());
    }

    #[test]
    fn bytes_within_the_limit_are_counted_only_when_more_comes() {
        let mut c = Capture::new(4);
        c.push("é".as_bytes());
        c.push(&"😀".as_bytes()[..1]);
        assert_eq!((c.window.chars(), c.uncounted), (0, 3), "kept as they are");
        // Past 4 bytes: what was kept is counted first (é and the start
        // of 😀), then the rest of 😀 and two more characters fit.
        c.push(&"😀".as_bytes()[1..]);
        c.push(b"abc");
        assert_eq!((c.window.chars(), c.uncounted), (4, 0));
        assert_eq!(c.text(), "é😀ab");
        assert!(c.is_truncated());
        assert_eq!(c.total_bytes(), 9);
    }

    #[test]
    fn memory_stays_bounded_for_a_large_stream() {
        let chunk = [b'x'; 8192];
        let mut c = Capture::new(64_000);
        let mut fed = 0u64;
        while fed < 10_000_000 {
            c.push(&chunk);
            fed += chunk.len() as u64;
            assert!(c.room() <= 4 * 64_000);
        }
        assert_eq!(c.bytes().len(), 64_000);
        assert_eq!(c.text().len(), 64_000);
        assert_eq!(c.total_bytes(), fed);
        assert!(c.is_truncated());
    }

    #[test]
    fn memory_stays_bounded_for_multi_byte_text() {
        let chunk = "😀".repeat(2048);
        let mut c = Capture::new(1000);
        for _ in 0..100 {
            c.push(chunk.as_bytes());
        }
        assert_eq!(c.bytes().len(), 4000);
        assert!(c.room() <= 4000);
        assert_eq!(c.text().chars().count(), 1000);
        assert_eq!(c.total_bytes(), 819_200);
    }

    #[test]
    fn truncate_chars_keeps_short_text() {
        assert_eq!(truncate_chars("", 4000), ("", false));
        assert_eq!(truncate_chars("abc", 3), ("abc", false));
        let s = "é".repeat(4000);
        assert_eq!(truncate_chars(&s, 4000), (s.as_str(), false));
    }

    #[test]
    fn truncate_chars_cuts_on_a_char_boundary() {
        assert_eq!(truncate_chars("abcdef", 4), ("abcd", true));
        assert_eq!(truncate_chars("aé😀b", 2), ("aé", true));
        assert_eq!(truncate_chars("aé😀b", 0), ("", true));

        let s = "😀".repeat(64_001);
        let (cut, was_cut) = truncate_chars(&s, 64_000);
        assert!(was_cut);
        assert_eq!(cut.chars().count(), 64_000);
        assert_eq!(cut.len(), 256_000);

        let s = "x".repeat(4001);
        let (cut, was_cut) = truncate_chars(&s, 4000);
        assert!(was_cut);
        assert_eq!(cut.len(), 4000);
    }
}
