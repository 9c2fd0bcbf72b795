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
/// anything but letters and digits between them; and every base64, hex or percent-encoded run that
/// decodes to such an echo (as an SMTP server may echo `AUTH PLAIN`'s argument); the secret's
/// punctuation before and after its letters and digits goes with the echo. A secret with
/// fewer than [`MIN_RUN`] letters and digits is matched whole (in any ASCII case), and not cut
/// short or in encoded runs (loosely, a few characters would match everywhere). Ranges are sorted and do not overlap. Only the first
/// [`MAX_SEARCHED`] bytes of `text` are searched; the time is linear in both lengths.
pub fn echoes(text: &str, secret: &str) -> Vec<Range<usize>> {
    let text = &text[..floor_char_boundary(text, MAX_SEARCHED)];
    let matcher = Matcher::new(secret);
    let mut found = matcher.find(text);
    // A few characters matched exactly would turn up in decoded noise.
    if matcher.loose() {
        let decoded_echoes = encoded_runs(text).filter(|(_, decoded)| !matcher.find(decoded).is_empty());
        found.extend(decoded_echoes.map(|(run, _)| run));
    }
    merged(found)
}

/// A secret prepared for searching.
struct Matcher<'a> {
    secret: &'a str,
    /// Every [`MIN_RUN`]-long window of its letters and digits, folded; none when it has too
    /// few to match loosely. A text window found here is part of an echo.
    windows: HashSet<[char; MIN_RUN]>,
}

impl<'a> Matcher<'a> {
    fn new(secret: &'a str) -> Self {
        let wanted: Vec<char> = secret.chars().filter(|c| c.is_alphanumeric()).map(fold).collect();
        let windows = wanted.windows(MIN_RUN).filter_map(|w| <[char; MIN_RUN]>::try_from(w).ok()).collect();
        Self { secret, windows }
    }

    /// Whether the secret is matched loosely (it has at least [`MIN_RUN`] letters and digits).
    fn loose(&self) -> bool {
        !self.windows.is_empty()
    }

    fn find(&self, text: &str) -> Vec<Range<usize>> {
        if !self.loose() {
            return exactly(text, self.secret);
        }
        let folded: Vec<Folded> = text
            .char_indices()
            .filter(|(_, c)| c.is_alphanumeric())
            .map(|(i, c)| Folded { c: fold(c), at: i..i + c.len_utf8() })
            .collect();
        let chars: Vec<char> = folded.iter().map(|f| f.c).collect();
        // covered[i]: the i-th letter or digit of `text` is part of an echo.
        let mut covered = vec![false; folded.len()];
        for (start, window) in chars.windows(MIN_RUN).enumerate() {
            if <[char; MIN_RUN]>::try_from(window).is_ok_and(|w| self.windows.contains(&w)) {
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
        // The secret's own punctuation before its first letter or digit, and after its last,
        // where the text has it right there.
        let lead = self.secret.chars().take_while(|c| !c.is_alphanumeric()).collect::<String>();
        let trail = self.secret.chars().rev().take_while(|c| !c.is_alphanumeric()).collect::<Vec<_>>();
        let trail: String = trail.into_iter().rev().collect();
        // As the IMAP LOGIN string escaped it, or as sent (the escaped form is never shorter).
        let forms = |p: &str| [imap_escaped(p), p.to_owned()];
        let (leads, trails) = (forms(&lead), forms(&trail));
        for r in &mut ranges {
            if let Some(l) = leads.iter().find(|l| !l.is_empty() && text[..r.start].ends_with(l.as_str())) {
                r.start -= l.len();
            }
            if let Some(t) = trails.iter().find(|t| !t.is_empty() && text[r.end..].starts_with(t.as_str())) {
                r.end += t.len();
            }
        }
        ranges
    }
}

/// Where `text` holds `secret` as it is, or as the quoted IMAP string it was sent as, in any
/// ASCII case.
fn exactly(text: &str, secret: &str) -> Vec<Range<usize>> {
    if secret.is_empty() {
        return Vec::new();
    }
    // ASCII case folding keeps every byte where it was, so the ranges hold for `text`.
    let (text, secret) = (text.to_ascii_lowercase(), secret.to_ascii_lowercase());
    let escaped = imap_escaped(&secret);
    merged(
        [secret.as_str(), escaped.as_str()]
            .iter()
            .flat_map(|s| text.match_indices(*s).map(|(i, m)| i..i + m.len()))
            .collect(),
    )
}

/// `s` as the inside of an IMAP quoted string.
fn imap_escaped(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// `ranges` sorted, overlapping ones joined.
fn merged(mut found: Vec<Range<usize>>) -> Vec<Range<usize>> {
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

/// Shortest base64 run decoded: four characters carry three bytes.
const MIN_BASE64_RUN: usize = 4;

/// The runs of `text` that may be encoded, each with what it decodes to (lossily, as text):
/// base64 runs (either alphabet, padded or not, decoded from each of the four offsets, since an
/// echo may be cut at its start), whitespace-free runs holding a `%XX` escape, and hex runs
/// (in either case, as in a dump: bytes maybe prefixed `0x` or `\x`, split by a space, `:`,
/// `-`, `,` or `, `).
fn encoded_runs(text: &str) -> impl Iterator<Item = (Range<usize>, String)> + '_ {
    base64_runs(text).chain(percent_runs(text)).chain(hex_runs(text))
}

/// Shortest hex run decoded: the bytes of a shortest loose echo.
const MIN_HEX_DIGITS: usize = 2 * MIN_RUN;

fn hex_runs(text: &str) -> impl Iterator<Item = (Range<usize>, String)> + '_ {
    let bytes = text.as_bytes();
    let digit_at = |i: usize| bytes.get(i).is_some_and(u8::is_ascii_hexdigit);
    // The length of a byte's prefix (`0x`, `\x`) at `i` that a digit follows; 0 if none.
    let prefix_at = |i: usize| match bytes.get(i..i + 2) {
        Some([b'0' | b'\\', b'x' | b'X']) if digit_at(i + 2) => 2,
        _ => 0,
    };
    let mut runs = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if prefix_at(i) == 0 && !digit_at(i) {
            i += 1;
            continue;
        }
        let (start, mut end) = (i, i);
        let mut digits = Vec::new();
        // Digits, each maybe prefixed, and up to two separators between them.
        loop {
            i += prefix_at(i);
            if digit_at(i) {
                digits.push(bytes[i]);
                i += 1;
                end = i;
                continue;
            }
            let gap = match bytes.get(i..i + 2) {
                Some(b", ") => 2,
                _ => usize::from(bytes.get(i).is_some_and(|b| matches!(b, b' ' | b':' | b'-' | b','))),
            };
            if gap > 0 && (digit_at(i + gap) || prefix_at(i + gap) > 0) {
                i += gap;
                continue;
            }
            break;
        }
        if digits.len() >= MIN_HEX_DIGITS {
            runs.push((start..end, digits));
        }
    }
    runs.into_iter().map(|(run, digits)| {
        // From either offset: an echo may be cut in the middle of a byte.
        let decoded: Vec<String> = (0..2)
            .filter_map(|skip| {
                let part = digits.get(skip..)?;
                hex::decode(&part[..part.len() - part.len() % 2]).ok()
            })
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .collect();
        (run, decoded.join("\u{fffd}"))
    })
}

fn base64_runs(text: &str) -> impl Iterator<Item = (Range<usize>, String)> + '_ {
    use base64::Engine as _;
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    let lenient = GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true);
    let engine = GeneralPurpose::new(&base64::alphabet::STANDARD, lenient);
    let bytes = text.as_bytes();
    let is_digit = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'-' | b'_');
    let mut runs = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if !is_digit(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && is_digit(bytes[i]) {
            i += 1;
        }
        let digits = start..i;
        while i < bytes.len() && i - digits.end < 2 && bytes[i] == b'=' {
            i += 1;
        }
        if digits.len() >= MIN_BASE64_RUN {
            runs.push((digits, start..i));
        }
    }
    runs.into_iter().map(move |(digits, run)| {
        // Both alphabets at once: a run may join a blob to text around it (a URL's path).
        let encoded: String = text[digits]
            .chars()
            .map(|c| match c {
                '-' => '+',
                '_' => '/',
                c => c,
            })
            .collect();
        let decoded: String = (0..4)
            .filter_map(|skip| {
                let part = encoded.get(skip..)?;
                // A length of 4n + 1 holds a character that carries no whole byte.
                let part = &part[..part.len() - usize::from(part.len() % 4 == 1)];
                engine.decode(part).ok()
            })
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .collect::<Vec<_>>()
            .join("\u{fffd}");
        (run, decoded)
    })
}

fn percent_runs(text: &str) -> impl Iterator<Item = (Range<usize>, String)> + '_ {
    text.split_whitespace().filter_map(move |word| {
        // `word` lies inside `text`: its offset is the distance between their starts.
        let start = word.as_ptr() as usize - text.as_ptr() as usize;
        if !word.contains('%') {
            return None;
        }
        let mut bytes = Vec::with_capacity(word.len());
        let raw = word.as_bytes();
        let mut i = 0;
        while i < raw.len() {
            let hex = raw
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match (raw[i], hex) {
                (b'%', Some(b)) => {
                    bytes.push(b);
                    i += 3;
                }
                (b'+', _) => {
                    bytes.push(b' ');
                    i += 1;
                }
                (b, _) => {
                    bytes.push(b);
                    i += 1;
                }
            }
        }
        Some((start..start + word.len(), String::from_utf8_lossy(&bytes).into_owned()))
    })
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
    fn a_code_s_punctuation_before_and_after_its_letters_goes_with_the_echo() {
        let code = "!!!!Abcd1234efgh";
        assert_eq!(redact("V1 NO bad \"!!!!Abcd1234efgh\"", code), "V1 NO bad \"[redacted]\"");
        assert_eq!(redact("NO abcd1234efgh##, try again", "Abcd1234efgh##"), "NO [redacted], try again");
        // As IMAP LOGIN quoted it, its `"` escaped.
        assert_eq!(redact("BAD \"!\\\"Abcd1234efgh\"", "!\"Abcd1234efgh"), "BAD \"[redacted]\"");
        assert_eq!(redact("NO \"Abcd1234efgh\\\"\" x", "Abcd1234efgh\""), "NO \"[redacted]\" x");
        // A code with few letters and digits, in another case.
        assert_eq!(redact("NO AB#$%^&*12 refused", "ab#$%^&*12"), "NO [redacted] refused");
    }

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
    fn an_encoded_echo_is_found() {
        use base64::Engine as _;
        use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
        let plain = STANDARD.encode(format!("\0alice@sina.com\0{CODE}"));
        for echoed in [
            // SMTP AUTH PLAIN's argument, and AUTH LOGIN's, as sent.
            plain.clone(),
            STANDARD.encode(CODE),
            URL_SAFE_NO_PAD.encode(CODE.to_lowercase()),
            // Cut at either end.
            plain[5..].to_owned(),
            plain[..plain.len() - 3].to_owned(),
            "SinaCode%31%32%33%34%35%36%37%38".to_owned(),
            // Joined to the text around it, whose - and / are of different alphabets.
            format!("https://mx.example.com/auth-log/{}", STANDARD.encode(CODE)),
            format!("x_y/{}", URL_SAFE_NO_PAD.encode(format!("\0{CODE}"))),
            // Hex, in either case, as a dump, or cut in the middle of a byte.
            hex::encode(CODE),
            hex::encode_upper(format!("\0{CODE}")),
            CODE.bytes().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" "),
            CODE.bytes().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":"),
            hex::encode(format!("x{CODE}"))[1..].to_owned(),
            CODE.bytes().map(|b| format!("0x{b:02x}")).collect::<Vec<_>>().join(", "),
            CODE.bytes().fold(String::new(), |mut s, b| {
                let _ = std::fmt::Write::write_fmt(&mut s, format_args!("\\x{b:02X}"));
                s
            }),
        ] {
            let out = redact(&format!("535 5.7.8 Error: authentication failed: {echoed} (try again)"), CODE);
            // Only the run that holds it is redacted: text before it in the word is kept.
            let kept = out.strip_prefix("535 5.7.8 Error: authentication failed: ").unwrap_or(&out);
            let kept = kept.strip_suffix("[redacted] (try again)").unwrap_or(kept);
            assert!(echoed.starts_with(kept), "{echoed:?} gave {out:?}");
            assert!(out.ends_with("[redacted] (try again)"), "{echoed:?} gave {out:?}");
        }
        // What decodes to nothing like the code stays.
        let other = STANDARD.encode("\0alice@sina.com\0SomethingElse999");
        let reply =
            format!("535 authentication failed: {other} 50%25 off {} dead beef", hex::encode("SomethingElse999"));
        assert_eq!(redact(&reply, CODE), reply);
    }

    #[test]
    fn a_long_secret_and_text_are_matched_in_one_pass() {
        let secret = "a".repeat(16 * 1024);
        let text = "a".repeat(MAX_SEARCHED * 2);
        // Matching every start against every start of the secret would run for hours here.
        assert_eq!(redact(&text, &secret), "[redacted]");
        // Nor is decoding every run of a long text against a long secret slow.
        let unit = "QUFBQUFBQUFBQUFB %41%41%41%41%41%41%41%41%41 ";
        let words = unit.repeat(MAX_SEARCHED / unit.len());
        assert_eq!(redact(&words, &secret).matches("[redacted]").count(), MAX_SEARCHED / unit.len() * 2);
    }

    #[test]
    fn non_ascii_text_keeps_its_boundaries() {
        let text = format!("é{}ü", "ß".repeat(MAX_SEARCHED));
        let out = redact(&text, CODE);
        assert!(out.len() <= MAX_SEARCHED && text.starts_with(&out) && out.len() > MAX_SEARCHED - 4, "{}", out.len());
        assert_eq!(redact("Ärger SINACODE12345678 ÖL", CODE), "Ärger [redacted] ÖL");
    }
}
