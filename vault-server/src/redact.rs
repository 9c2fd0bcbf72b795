//! Spotting a secret echoed in free text (a provider's reply, an operator's revoke reason):
//! not only byte for byte, but in another case, spaced or punctuated differently (as Gmail
//! shows app passwords, or as an IMAP string escapes them), or cut short.

use std::collections::HashSet;
use std::ops::Range;

/// Shortest run of a secret's letters and digits that counts as an echo of it.
pub const MIN_RUN: usize = 8;

/// Text is searched, and redacted text kept, up to this many bytes (replies are cut to far less
/// before they are shown).
pub const MAX_SEARCHED: usize = 4096;

/// A letter or digit of `text`, folded to lower case, with where it lies in `text`.
struct Folded {
    c: char,
    at: Range<usize>,
}

fn fold(c: char) -> char {
    c.to_lowercase().next().unwrap_or(c)
}

/// The byte ranges of `text` that echo `secret`: every run of at least [`MIN_RUN`] of the
/// secret's letters and digits, in order and in any case, that `text` holds in order with
/// anything but letters and digits between them. A secret with fewer than [`MIN_RUN`] letters
/// and digits is matched exactly as it is (loosely, a few characters would match everywhere).
/// Ranges are sorted and do not overlap. Only the first [`MAX_SEARCHED`] bytes of `text` are
/// searched; the time is linear in both lengths.
pub fn echoes(text: &str, secret: &str) -> Vec<Range<usize>> {
    let text = &text[..floor_char_boundary(text, MAX_SEARCHED)];
    let wanted: Vec<char> = secret.chars().filter(|c| c.is_alphanumeric()).map(fold).collect();
    if wanted.len() < MIN_RUN {
        return exactly(text, secret);
    }
    // Every MIN_RUN-long window of the secret; a text window found here is part of an echo.
    let windows: HashSet<&[char]> = wanted.windows(MIN_RUN).collect();
    let folded: Vec<Folded> = text
        .char_indices()
        .filter(|(_, c)| c.is_alphanumeric())
        .map(|(i, c)| Folded { c: fold(c), at: i..i + c.len_utf8() })
        .collect();
    let chars: Vec<char> = folded.iter().map(|f| f.c).collect();
    // covered[i]: the i-th letter or digit of `text` is part of an echo.
    let mut covered = vec![false; folded.len()];
    for (start, window) in chars.windows(MIN_RUN).enumerate() {
        if windows.contains(window) {
            covered[start..start + MIN_RUN].iter_mut().for_each(|c| *c = true);
        }
    }
    let mut ranges: Vec<Range<usize>> = Vec::new();
    for (i, f) in folded.iter().enumerate().filter(|(i, _)| covered[*i]) {
        match ranges.last_mut() {
            Some(last) if i > 0 && covered[i - 1] => last.end = f.at.end,
            _ => ranges.push(f.at.clone()),
        }
    }
    ranges
}

/// Where `text` holds `secret` as it is, or as the quoted IMAP string it was sent as.
fn exactly(text: &str, secret: &str) -> Vec<Range<usize>> {
    if secret.is_empty() {
        return Vec::new();
    }
    let escaped = secret.replace('\\', "\\\\").replace('"', "\\\"");
    let mut found: Vec<Range<usize>> =
        [secret, escaped.as_str()].iter().flat_map(|s| text.match_indices(*s).map(|(i, m)| i..i + m.len())).collect();
    found.sort_by_key(|r| (r.start, std::cmp::Reverse(r.end)));
    let mut ranges: Vec<Range<usize>> = Vec::new();
    for r in found {
        match ranges.last_mut() {
            Some(last) if r.start < last.end => last.end = last.end.max(r.end),
            _ => ranges.push(r),
        }
    }
    ranges
}

/// `text`, cut to its first [`MAX_SEARCHED`] bytes, with every echo of `secret` replaced by
/// `[redacted]`.
pub fn redact(text: &str, secret: &str) -> String {
    let text = &text[..floor_char_boundary(text, MAX_SEARCHED)];
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for r in echoes(text, secret) {
        out.push_str(&text[last..r.start]);
        out.push_str("[redacted]");
        last = r.end;
    }
    out.push_str(&text[last..]);
    out
}

/// The largest char boundary of `s` at or below `max`.
fn floor_char_boundary(s: &str, max: usize) -> usize {
    if max >= s.len() {
        return s.len();
    }
    (0..=max).rev().find(|i| s.is_char_boundary(*i)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CODE: &str = "SinaCode12345678";

    #[test]
    fn an_exact_echo_is_found() {
        assert_eq!(redact("NO bad password SinaCode12345678 here", CODE), "NO bad password [redacted] here");
    }

    #[test]
    fn another_case_spacing_or_punctuation_is_found() {
        for echoed in [
            "sinacode12345678",
            "SINACODE12345678",
            "Sina Code 1234 5678",
            "SinaCode\u{1}12345678",
            "Sina-Code-1234-5678",
            "\"Sina\\\"Code12345678\"",
        ] {
            let out = redact(&format!("NO {echoed} ok"), CODE);
            assert!(!out.to_lowercase().contains("1234"), "{echoed:?} left in {out:?}");
            assert!(out.starts_with("NO ") && out.ends_with(" ok"), "{out:?}");
        }
    }

    #[test]
    fn a_truncated_echo_is_found_and_a_short_overlap_is_not() {
        assert_eq!(redact("bad SinaCode1234567...", CODE), "bad [redacted]...");
        assert_eq!(redact("xyz ...e12345678", CODE), "xyz ...[redacted]");
        // Seven letters in a row are not enough for a 16-character code.
        assert_eq!(redact("was 1234567.", CODE), "was 1234567.");
    }

    #[test]
    fn a_secret_with_few_letters_or_digits_is_matched_exactly() {
        assert_eq!(redact("x abc1 y", "abc1"), "x [redacted] y");
        assert_eq!(redact("x ab-C1 y", "abc1"), "x ab-C1 y");
        // Two letters would otherwise match every "ab" in a reply.
        assert_eq!(redact("about ab!!!!!! tab", "ab!!!!!!"), "about [redacted] tab");
        assert_eq!(redact("a !!!! b", "!!!!"), "a [redacted] b");
        assert_eq!(redact("a b", ""), "a b");
    }

    #[test]
    fn a_long_secret_and_text_are_matched_in_one_pass() {
        let secret = "a".repeat(16 * 1024);
        let text = "a".repeat(MAX_SEARCHED * 2);
        // Matching every start against every start of the secret would run for hours here.
        assert_eq!(redact(&text, &secret), "[redacted]");
    }

    #[test]
    fn non_ascii_text_keeps_its_boundaries() {
        let text = format!("é{}ü", "ß".repeat(MAX_SEARCHED));
        let out = redact(&text, CODE);
        assert!(out.len() <= MAX_SEARCHED && text.starts_with(&out) && out.len() > MAX_SEARCHED - 4, "{}", out.len());
        assert_eq!(redact("Ärger SINACODE12345678 ÖL", CODE), "Ärger [redacted] ÖL");
    }
}
