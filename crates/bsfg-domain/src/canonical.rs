//! Recognising JSON that is already in RFC 8785 canonical form.
//!
//! Why: every fact's `object_json` is stored canonical, so it is
//! canonicalised on every append — and again by every zone it crosses
//! (defence in depth: a relay checks what it imports). The general path
//! (`serde_json` `Value`, then `serde_json_canonicalizer`, which re-parses
//! every key to sort it) allocates per value and per key; profiles put it
//! at 4–8 % of a node's CPU per fact. Facts that crossed a zone, and most
//! producers' facts, are canonical already, so a single pass over the bytes
//! that says "this is exactly what canonicalising would produce" lets the
//! node keep them as they are.
//!
//! The scan is conservative: `true` only for text that canonicalising
//! provably leaves unchanged (no whitespace; object keys without escapes in
//! strictly increasing UTF-16 order, so no duplicates; strings escaped
//! exactly as the canonicaliser escapes them; numbers exactly as ECMAScript
//! prints their double; nesting within `DEPTH_MAX`). Anything else answers
//! `false` and takes the general path, which also produces every error
//! message, so the scan never decides what is rejected.

/// Deeper nesting is left to the general path (serde_json's own limit is
/// 128 levels).
const DEPTH_MAX: usize = 100;

/// Whether `json` is a JSON object already in RFC 8785 canonical form, i.e.
/// canonicalising it would return the same bytes.
pub fn is_canonical_object(json: &str) -> bool {
    let mut scan = Scan {
        text: json,
        bytes: json.as_bytes(),
        at: 0,
    };
    scan.bytes.first() == Some(&b'{') && scan.value(0).is_some() && scan.at == scan.bytes.len()
}

struct Scan<'a> {
    /// The same text as `bytes`: slices of it at ASCII boundaries need no
    /// second UTF-8 check.
    text: &'a str,
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Scan<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.at += 1)
    }

    fn literal(&mut self, text: &[u8]) -> Option<()> {
        self.bytes[self.at..]
            .starts_with(text)
            .then(|| self.at += text.len())
    }

    fn value(&mut self, depth: usize) -> Option<()> {
        match self.peek()? {
            b'{' => self.object(depth + 1),
            b'[' => self.array(depth + 1),
            b'"' => self.string().map(|_| ()),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    /// Enters a container opened by `open`: `Some(true)` if it is empty
    /// (and already left), `None` if it nests too deep.
    fn open(&mut self, open: u8, close: u8, depth: usize) -> Option<bool> {
        if depth > DEPTH_MAX {
            return None;
        }
        self.expect(open)?;
        Some(self.expect(close).is_some())
    }

    /// After a member or element: `,` (`false`: another follows) or the
    /// container's `close` (`true`: left).
    fn separator(&mut self, close: u8) -> Option<bool> {
        let byte = self.peek()?;
        self.at += 1;
        match byte {
            b',' => Some(false),
            _ if byte == close => Some(true),
            _ => None,
        }
    }

    fn object(&mut self, depth: usize) -> Option<()> {
        if self.open(b'{', b'}', depth)? {
            return Some(());
        }
        let mut previous: Option<std::borrow::Cow<'a, str>> = None;
        loop {
            let (key, escaped) = self.string()?;
            // Keys are ordered by their text, not by their escapes.
            let key = if escaped {
                std::borrow::Cow::Owned(unescape(key))
            } else {
                std::borrow::Cow::Borrowed(key)
            };
            if previous.as_deref().is_some_and(|p| !utf16_less(p, &key)) {
                return None;
            }
            previous = Some(key);
            self.expect(b':')?;
            self.value(depth)?;
            if self.separator(b'}')? {
                return Some(());
            }
        }
    }

    fn array(&mut self, depth: usize) -> Option<()> {
        if self.open(b'[', b']', depth)? {
            return Some(());
        }
        loop {
            self.value(depth)?;
            if self.separator(b']')? {
                return Some(());
            }
        }
    }

    /// A string escaped as the canonicaliser escapes: `\"`, `\\`, the five
    /// short control escapes, `\u00xx` (lower-case hex) for the other
    /// control characters, everything else literal. Returns the text between
    /// the quotes and whether it held an escape.
    fn string(&mut self) -> Option<(&'a str, bool)> {
        let text: &'a str = self.text;
        self.expect(b'"')?;
        let start = self.at;
        let mut escaped = false;
        loop {
            self.skip_plain_string_bytes();
            match self.peek()? {
                b'"' => break,
                0x00..=0x1f => return None,
                b'\\' => {
                    escaped = true;
                    self.at += 1;
                    match self.peek()? {
                        b'"' | b'\\' | b'b' | b'f' | b'n' | b'r' | b't' => self.at += 1,
                        b'u' => {
                            let hex = self.bytes.get(self.at + 1..self.at + 5)?;
                            let code = match hex {
                                [b'0', b'0', high @ b'0'..=b'1', low] => {
                                    let low = match low {
                                        b'0'..=b'9' => low - b'0',
                                        b'a'..=b'f' => low - b'a' + 10,
                                        _ => return None,
                                    };
                                    (high - b'0') * 16 + low
                                }
                                _ => return None,
                            };
                            // These five have short escapes.
                            if matches!(code, 0x08 | 0x09 | 0x0a | 0x0c | 0x0d) {
                                return None;
                            }
                            self.at += 5;
                        }
                        _ => return None,
                    }
                }
                _ => self.at += 1,
            }
        }
        let content = &text[start..self.at];
        self.at += 1;
        Some((content, escaped))
    }

    /// Skips string bytes that need no attention (not `"`, `\`, or a
    /// control character) eight at a time: most of a fact's bytes are
    /// string contents, and a byte-at-a-time loop was most of the scan.
    fn skip_plain_string_bytes(&mut self) {
        const ONES: u64 = 0x0101_0101_0101_0101;
        const HIGHS: u64 = 0x8080_8080_8080_8080;
        // Non-zero exactly when some byte of `v` is zero (or, with `n`,
        // below `n`; `n` <= 0x80).
        let any_below = |v: u64, n: u8| v.wrapping_sub(ONES * u64::from(n)) & !v & HIGHS;
        while let Some(chunk) = self.bytes.get(self.at..self.at + 8) {
            let word = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
            let special = any_below(word, 0x20)
                | any_below(word ^ (ONES * u64::from(b'"')), 1)
                | any_below(word ^ (ONES * u64::from(b'\\')), 1);
            if special != 0 {
                return;
            }
            self.at += 8;
        }
    }

    /// A number written exactly as ECMAScript prints its double (what the
    /// canonicaliser writes for every JSON number).
    fn number(&mut self) -> Option<()> {
        let start = self.at;
        while matches!(
            self.peek(),
            Some(b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
        ) {
            self.at += 1;
        }
        let token = &self.text[start..self.at];
        if is_plain_integer(token) {
            return Some(());
        }
        // `parse` accepts more than JSON does ("+1", ".5", "inf"), but the
        // token must equal ECMAScript's output, which is always valid JSON.
        let value: f64 = token.parse().ok()?;
        if !value.is_finite() {
            return None;
        }
        (ryu_js::Buffer::new().format_finite(value) == token).then_some(())
    }
}

/// The text of a string the scan accepted (so only the escapes it allows).
fn unescape(escaped: &str) -> String {
    let mut text = String::with_capacity(escaped.len());
    let mut chars = escaped.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            text.push(c);
            continue;
        }
        text.push(match chars.next() {
            Some('b') => '\u{8}',
            Some('f') => '\u{c}',
            Some('n') => '\n',
            Some('r') => '\r',
            Some('t') => '\t',
            Some('u') => {
                let hex: String = chars.by_ref().take(4).collect();
                char::from_u32(
                    u32::from_str_radix(&hex, 16).expect("the scan checked the hex digits"),
                )
                .expect("a control character")
            }
            Some(other) => other,
            None => unreachable!("the scan ends a string only at its closing quote"),
        });
    }
    text
}

/// `0` or an integer of at most 15 digits without a leading zero: exactly
/// representable as a double and printed as these digits (but not `-0`,
/// which prints as `0`).
fn is_plain_integer(token: &str) -> bool {
    let digits = token.strip_prefix('-').unwrap_or(token);
    if token == "0" {
        return true;
    }
    (1..=15).contains(&digits.len())
        && !digits.starts_with('0')
        && digits.bytes().all(|b| b.is_ascii_digit())
}

/// RFC 8785 orders keys by their UTF-16 code units. UTF-8 byte order agrees
/// with it except between a character above U+FFFF (a surrogate pair in
/// UTF-16) and one in U+E000..=U+FFFF, whose UTF-8 starts at 0xEE.
fn utf16_less(a: &str, b: &str) -> bool {
    let needs_utf16 = |s: &str| s.bytes().any(|byte| byte >= 0xee);
    if needs_utf16(a) || needs_utf16(b) {
        a.encode_utf16().lt(b.encode_utf16())
    } else {
        a.as_bytes() < b.as_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canonicalise(json: &str) -> Option<String> {
        let value: serde_json::Value = serde_json::from_str(json).ok()?;
        value
            .is_object()
            .then(|| serde_json_canonicalizer::to_string(&value).unwrap())
    }

    /// The property the node relies on, both ways: whatever the scan
    /// accepts canonicalises to itself, and whatever canonicalising
    /// produces, the scan accepts.
    fn check(json: &str) {
        let canonical = canonicalise(json);
        if is_canonical_object(json) {
            assert_eq!(
                canonical.as_deref(),
                Some(json),
                "the scan accepted {json:?}, which canonicalises differently"
            );
        }
        if let Some(canonical) = canonical {
            assert!(
                is_canonical_object(&canonical),
                "the scan refused canonical output {canonical:?} (of {json:?})"
            );
        }
    }

    #[test]
    fn accepts_exactly_what_canonicalising_leaves_unchanged() {
        let cases = [
            r#"{}"#,
            r#"{"a":1}"#,
            r#"{"a":1,"b":[true,false,null,"x",{}]}"#,
            r#"{"b":1,"a":2}"#,
            r#"{"a":1,"a":2}"#,
            r#"{ "a":1}"#,
            r#"{"a":1} "#,
            r#"{"a":1.0}"#,
            r#"{"a":1.5}"#,
            r#"{"a":1e3}"#,
            r#"{"a":1E3}"#,
            r#"{"a":1000}"#,
            r#"{"a":-0}"#,
            r#"{"a":0.1}"#,
            r#"{"a":0.10}"#,
            r#"{"a":1e21}"#,
            r#"{"a":1e+21}"#,
            r#"{"a":1e-7}"#,
            r#"{"a":123456789012345678}"#,
            r#"{"a":1e400}"#,
            r#"{"a":01}"#,
            r#"{"a":+1}"#,
            r#"{"a":.5}"#,
            r#"{"a":"\/"}"#,
            r#"{"a":"/"}"#,
            r#"{"a":"\u0041"}"#,
            r#"{"a":"\u001f"}"#,
            r#"{"a":"\u001F"}"#,
            r#"{"a":"\u000a"}"#,
            r#"{"a":"\n\t\"\\"}"#,
            r#"{"a":"é€😀"}"#,
            r#"{"\u0001":1}"#,
            r#"{"a\n":1}"#,
            r#"{"":1,"a":2}"#,
            r#"{"a":[1,[2,[3]]]}"#,
            r#"{"a":tru}"#,
            r#"{"a":1,}"#,
            r#"{"a":1]"#,
            r#"{"a":[1}"#,
            r#"{"a":[1]]"#,
            r#"{"a"}"#,
            r#"[1,2]"#,
            r#""text""#,
            "{\"a\":\"\u{7f}\"}",
            r#"{"a":"0123456789abcdef0123"}"#,
            r#"{"a":"0123456789abc\"ef0123"}"#,
            r#"{"a":"0123456789abc\/ef0123"}"#,
            "{\"a\":\"01234567\u{1}9abcdef\"}",
            "{\"a\":\"0123456789abcdef\u{1f}\"}",
            "{\"a\":\"\u{2028}\"}",
            // UTF-16 order differs from code point order here.
            "{\"\u{e000}\":1,\"\u{10000}\":2}",
            "{\"\u{10000}\":1,\"\u{e000}\":2}",
            "{\"\u{ffff}\":1,\"\u{10ffff}\":2}",
        ];
        for case in cases {
            check(case);
        }
        assert!(is_canonical_object(
            r#"{"a":1,"b":[true,false,null,"x",{}]}"#
        ));
        assert!(
            is_canonical_object("{\"\u{10000}\":1,\"\u{e000}\":2}"),
            "U+10000 sorts first in UTF-16"
        );
        assert!(!is_canonical_object("{\"\u{e000}\":1,\"\u{10000}\":2}"));
        assert!(
            !is_canonical_object(r#"{"a":1,"a":2}"#),
            "duplicate keys are not canonical"
        );
        assert!(!is_canonical_object(r#"{"a":1.0}"#));
        assert!(!is_canonical_object(r#"{"a":-0}"#));
        assert!(!is_canonical_object(r#"{"a":[1}}"#), "brackets must match");
    }

    /// Generated documents: their compact serde_json form, their pretty
    /// form, their canonical form, and a few number spellings each.
    #[test]
    fn generated_documents_agree_with_the_canonicaliser() {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut accepted = 0;
        for _ in 0..3000 {
            let document = serde_json::Value::Object(object(&mut next, 0));
            let compact = serde_json::to_string(&document).unwrap();
            let pretty = serde_json::to_string_pretty(&document).unwrap();
            let canonical = canonicalise(&compact).unwrap();
            for text in [&compact, &pretty, &canonical] {
                check(text);
            }
            accepted += usize::from(is_canonical_object(&compact));
        }
        // Most compact documents differ from canonical only in numbers or
        // key order; some are canonical already. Both kinds must occur.
        assert!(
            accepted > 100 && accepted < 2900,
            "{accepted} of 3000 compact documents were canonical"
        );
    }

    fn object(
        next: &mut impl FnMut() -> u64,
        depth: usize,
    ) -> serde_json::Map<String, serde_json::Value> {
        let keys = [
            "a",
            "b",
            "B",
            "ab",
            "é",
            "\u{e000}",
            "\u{10000}",
            "\u{ffff}",
            "z\n",
            "\"",
            "k1",
            "",
        ];
        (0..next() % 4)
            .map(|_| {
                (
                    keys[(next() % keys.len() as u64) as usize].to_string(),
                    value(next, depth + 1),
                )
            })
            .collect()
    }

    fn value(next: &mut impl FnMut() -> u64, depth: usize) -> serde_json::Value {
        use serde_json::Value;
        // Long ones put quotes, escapes and control characters at every
        // position of the scan's eight-byte steps.
        let strings = [
            "",
            "x",
            "/",
            "\u{1}",
            "\t",
            "é😀",
            "\\",
            "\u{7f}",
            "0123456789abcdefghij",
            "01234567\"9abcdef",
            "0123456789ab\\def",
            "0123456\u{1f}89abcdef",
            "0123456789abcd\nfghijk",
            "0123456é89abcdef😀x",
            "\u{7f}\u{80}\u{ff}\u{7f}\u{7f}\u{7f}\u{7f}\u{7f}\u{7f}\u{7f}",
        ];
        let numbers = [
            0.0,
            -0.0,
            1.0,
            -17.0,
            0.1,
            1.5e300,
            123456789012345680.0,
            1e21,
            1e-7,
            21.5,
            2f64.powi(53),
        ];
        match next() % if depth > 3 { 5 } else { 7 } {
            0 => Value::Null,
            1 => Value::Bool(next().is_multiple_of(2)),
            2 => Value::String(strings[(next() % strings.len() as u64) as usize].into()),
            3 => serde_json::Number::from_f64(numbers[(next() % numbers.len() as u64) as usize])
                .map_or(Value::Null, Value::Number),
            4 => Value::Number(((next() % 2_000_001) as i64 - 1_000_000).into()),
            5 => Value::Array((0..next() % 3).map(|_| value(next, depth + 1)).collect()),
            _ => Value::Object(object(next, depth)),
        }
    }
}
