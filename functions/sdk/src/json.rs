//! Checking a JSON object and finding its top-level fields, without copying
//! or decoding anything: for functions that pass a device's JSON on, adding
//! to it or routing on a field, rather than turning it into Rust types.
//!
//! A typed parser (serde-json-core) costs tens of thousands of Wasm
//! instructions on a telemetry message of a few hundred bytes, most of it
//! serde's generic machinery skipping fields the function never reads; under
//! an interpreter each of those instructions is paid for. [`object`] is one
//! pass over the bytes with a loop per token, and checks the whole text
//! against RFC 8259 (UTF-8, string escapes, number syntax, nesting), so what
//! it accepts any JSON reader upstream accepts too.
//!
//! ```
//! use wasmgate_sdk::json;
//!
//! let text = br#"{"machine":"vm-17","temp_c":6.8,"stock":[{"slot":"A1","count":2}]}"#;
//! let mut temp = None;
//! let object = json::object(text, |name, value| {
//!     if name == b"temp_c" {
//!         temp = Some(value);
//!     }
//! })
//! .unwrap();
//! assert_eq!(temp, Some(&b"6.8"[..]));
//! assert_eq!(&text[object.close..], b"}");
//! assert!(json::object(br#"{"a": tru}"#, |_, _| {}).is_err());
//! ```

/// Containers (objects and arrays) may nest this deep below the top-level
/// object; deeper is refused rather than followed.
pub const MAX_DEPTH: u32 = 128;

/// Where a text stops being valid JSON, or is not an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidJson {
    /// Byte offset of the first byte that does not fit.
    pub offset: usize,
}

/// A valid JSON object, as found by [`object`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Object {
    /// Byte offset of the object's closing `}` (whitespace may follow).
    pub close: usize,
    /// The object has no members.
    pub empty: bool,
}

/// Checks that `text` is exactly one JSON object, with optional whitespace
/// around it, and calls `member(name, value)` for each top-level member in
/// order: `name` as written between its quotes (escapes not decoded, so a
/// name with escapes matches only its escaped form), `value` the raw text of
/// the value (a string keeps its quotes).
pub fn object<'a>(
    text: &'a [u8],
    mut member: impl FnMut(&'a [u8], &'a [u8]),
) -> Result<Object, InvalidJson> {
    if let Err(e) = core::str::from_utf8(text) {
        return Err(InvalidJson {
            offset: e.valid_up_to(),
        });
    }
    let mut s = Scanner { text, at: 0 };
    s.whitespace();
    s.expect(b'{')?;
    s.whitespace();
    let empty = s.peek() == Some(b'}');
    if !empty {
        loop {
            let name_start = s.at + 1;
            let name = &text[name_start..s.member_name()?];
            let value_start = s.at;
            s.value()?;
            member(name, &text[value_start..s.at]);
            s.whitespace();
            match s.peek() {
                Some(b',') => {
                    s.at += 1;
                    s.whitespace();
                }
                Some(b'}') => break,
                _ => return Err(s.invalid()),
            }
        }
    }
    let close = s.at;
    s.at += 1;
    s.whitespace();
    if s.at != text.len() {
        return Err(s.invalid());
    }
    Ok(Object { close, empty })
}

struct Scanner<'a> {
    text: &'a [u8],
    at: usize,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.get(self.at).copied()
    }

    fn invalid(&self) -> InvalidJson {
        InvalidJson { offset: self.at }
    }

    fn expect(&mut self, byte: u8) -> Result<(), InvalidJson> {
        if self.peek() == Some(byte) {
            self.at += 1;
            Ok(())
        } else {
            Err(self.invalid())
        }
    }

    fn whitespace(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.at += 1;
        }
    }

    /// One value, containers included; iterative, with the open containers
    /// as bits of `stack` (1 = object), so depth costs no native stack.
    fn value(&mut self) -> Result<(), InvalidJson> {
        let mut stack: u128 = 0;
        let mut depth: u32 = 0;
        loop {
            // A value starts here.
            match self.peek() {
                Some(b'{') | Some(b'[') => {
                    let is_object = self.peek() == Some(b'{');
                    if depth == MAX_DEPTH {
                        return Err(self.invalid());
                    }
                    self.at += 1;
                    self.whitespace();
                    let close = if is_object { b'}' } else { b']' };
                    if self.peek() == Some(close) {
                        self.at += 1;
                    } else {
                        stack = (stack << 1) | u128::from(is_object);
                        depth += 1;
                        if is_object {
                            let _ = self.member_name()?;
                        }
                        continue;
                    }
                }
                Some(b'"') => self.string()?,
                Some(b'-' | b'0'..=b'9') => self.number()?,
                Some(b't') => self.literal(b"true")?,
                Some(b'f') => self.literal(b"false")?,
                Some(b'n') => self.literal(b"null")?,
                _ => return Err(self.invalid()),
            }
            // A value ended: close containers until one goes on.
            loop {
                if depth == 0 {
                    return Ok(());
                }
                let in_object = stack & 1 == 1;
                self.whitespace();
                match self.peek() {
                    Some(b',') => {
                        self.at += 1;
                        self.whitespace();
                        if in_object {
                            let _ = self.member_name()?;
                        }
                        break;
                    }
                    Some(b'}') if in_object => {}
                    Some(b']') if !in_object => {}
                    _ => return Err(self.invalid()),
                }
                self.at += 1;
                stack >>= 1;
                depth -= 1;
            }
        }
    }

    /// `"name"` and its colon; leaves the scanner at the value and returns
    /// where the name ends (its closing quote).
    fn member_name(&mut self) -> Result<usize, InvalidJson> {
        self.string()?;
        let name_end = self.at - 1;
        self.whitespace();
        self.expect(b':')?;
        self.whitespace();
        Ok(name_end)
    }

    /// A string, from its opening quote to just past its closing one. The
    /// loop keeps its index in a local: under an interpreter, going through
    /// `self` costs a load and a store per byte.
    fn string(&mut self) -> Result<(), InvalidJson> {
        self.expect(b'"')?;
        let text = self.text;
        let mut at = self.at;
        while let Some(&byte) = text.get(at) {
            match byte {
                b'"' => {
                    self.at = at + 1;
                    return Ok(());
                }
                b'\\' => {
                    at += 1;
                    match text.get(at) {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => at += 1,
                        Some(b'u') => {
                            at += 1;
                            for _ in 0..4 {
                                if !text.get(at).is_some_and(u8::is_ascii_hexdigit) {
                                    self.at = at;
                                    return Err(self.invalid());
                                }
                                at += 1;
                            }
                        }
                        _ => {
                            self.at = at;
                            return Err(self.invalid());
                        }
                    }
                }
                // Control characters must be escaped.
                0..=0x1f => {
                    self.at = at;
                    return Err(self.invalid());
                }
                _ => at += 1,
            }
        }
        self.at = at;
        Err(self.invalid())
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
    fn number(&mut self) -> Result<(), InvalidJson> {
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.peek() {
            Some(b'0') => self.at += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(self.invalid()),
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            self.some_digits()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            self.some_digits()?;
        }
        Ok(())
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.at += 1;
        }
    }

    fn some_digits(&mut self) -> Result<(), InvalidJson> {
        if !self.peek().is_some_and(|b| b.is_ascii_digit()) {
            return Err(self.invalid());
        }
        self.digits();
        Ok(())
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), InvalidJson> {
        for &expected in word {
            self.expect(expected)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::String;
    use std::vec::Vec;

    /// The members `object` reports, as (name, value) strings.
    fn members(text: &str) -> Result<(Object, Vec<(String, String)>), InvalidJson> {
        let mut out = Vec::new();
        let object = object(text.as_bytes(), |name, value| {
            out.push((
                String::from_utf8(name.to_vec()).unwrap(),
                String::from_utf8(value.to_vec()).unwrap(),
            ))
        })?;
        Ok((object, out))
    }

    #[test]
    fn top_level_members_come_out_raw_and_in_order() {
        let text = r#" {"a":1, "b" : {"c":[1,2,{"d":null}]}, "e":"x\"y", "f":-0.5e+3,"g":true} "#;
        let (object, found) = members(text).unwrap();
        let found: Vec<(&str, &str)> = found
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            found,
            [
                ("a", "1"),
                ("b", r#"{"c":[1,2,{"d":null}]}"#),
                ("e", r#""x\"y""#),
                ("f", "-0.5e+3"),
                ("g", "true"),
            ]
        );
        assert_eq!(&text[object.close..], "} ");
        assert!(!object.empty);
    }

    #[test]
    fn an_empty_object_is_found_empty() {
        let (object, found) = members(" {\n} ").unwrap();
        assert!(object.empty && found.is_empty());
        assert_eq!(object.close, 3);
    }

    #[test]
    fn names_are_compared_as_written() {
        let (_, found) = members(r#"{"temp\u005fc":1}"#).unwrap();
        assert_eq!(found[0].0, r"temp\u005fc");
    }

    #[test]
    fn deep_nesting_up_to_the_limit_is_fine_and_beyond_it_refused() {
        let nested = |depth: usize| {
            let mut text = String::from(r#"{"a":"#);
            text.extend(std::iter::repeat_n('[', depth));
            text.extend(std::iter::repeat_n(']', depth));
            text.push('}');
            text
        };
        assert!(members(&nested(MAX_DEPTH as usize)).is_ok());
        let too_deep = nested(MAX_DEPTH as usize + 1);
        assert_eq!(
            members(&too_deep).unwrap_err().offset,
            5 + MAX_DEPTH as usize
        );
    }

    #[test]
    fn errors_point_at_the_first_byte_that_does_not_fit() {
        for (text, offset) in [
            ("", 0),
            ("[1]", 0),
            ("{", 1),
            (r#"{"a" 1}"#, 5),
            (r#"{"a":tru}"#, 8),
            (r#"{"a":1,}"#, 7),
            (r#"{"a":01}"#, 6),
            (r#"{"a":1.}"#, 7),
            (r#"{"a":"x\q"}"#, 8),
            ("{\"a\":\"\u{1}\"}", 6),
            (r#"{"a":1} x"#, 8),
            (r#"{"a":[1}"#, 7),
            (r#"{"a":{"b"}}"#, 9),
        ] {
            assert_eq!(
                members(text).unwrap_err(),
                InvalidJson { offset },
                "{text:?}"
            );
        }
        // Not UTF-8: refused where the bad byte is.
        let mut bytes = br#"{"a":"x"#.to_vec();
        bytes.extend([0xff, b'"', b'}']);
        assert_eq!(
            object(&bytes, |_, _| {}).unwrap_err(),
            InvalidJson { offset: 7 }
        );
    }

    /// serde_json's verdict: a text is a valid object when it starts with `{`
    /// and serde_json reads it as a value. `IgnoredAny` checks syntax only,
    /// as `object` does (a typed read would also refuse 1e400 as out of range).
    fn reference(bytes: &[u8]) -> bool {
        let Ok(text) = std::str::from_utf8(bytes) else {
            return false;
        };
        text.trim_start_matches([' ', '\t', '\n', '\r'])
            .starts_with('{')
            && serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
    }

    /// Every text here is judged the same way by serde_json (a full,
    /// reference JSON reader): valid objects accepted, everything else refused.
    #[test]
    fn agrees_with_serde_json_on_what_is_a_valid_object() {
        let cases = [
            r#"{}"#,
            r#"{"a":{}}"#,
            r#"{"a":[]}"#,
            r#"{"a":[[],{}]}"#,
            r#"{"a":"\u00e9\ud83d\ude00\/\b\f\n\r\t"}"#,
            r#"{"a":0}"#,
            r#"{"a":-0}"#,
            r#"{"a":1E5}"#,
            r#"{"a":1e-5}"#,
            r#"{"a":12.5e+3}"#,
            r#"{"a":"é 中文"}"#,
            r#"{"a":1,"a":2}"#,
            r#"{"a":1e400}"#,
            " \t\r\n{ \"a\" \t: \n 1 \r} \n",
            r#"{"a":[1,2,]}"#,
            r#"{"a":[,1]}"#,
            r#"{"a":+1}"#,
            r#"{"a":.5}"#,
            r#"{"a":1e}"#,
            r#"{"a":1e+}"#,
            r#"{"a":--1}"#,
            r#"{"a":0x10}"#,
            r#"{"a":NaN}"#,
            r#"{"a":Infinity}"#,
            r#"{"a":'x'}"#,
            r#"{"a":"x}"#,
            r#"{"a":"\u12"}"#,
            r#"{"a":"\u12G4"}"#,
            r#"{a:1}"#,
            r#"{"a":1"b":2}"#,
            r#"{"a":nul}"#,
            r#"{"a":truee}"#,
            r#"{"a":[1 2]}"#,
            r#"{"a":{"b":1,}}"#,
            r#"{"a":{"b"}}"#,
            r#"{"a":1}}"#,
            r#"{"a":1}{"b":2}"#,
            r#""a""#,
            "1",
            "null",
            "[]",
            "{\"a\":\"tab\there\"}",
            "{\"a\":1}\u{0}",
        ];
        for text in cases {
            let ours = object(text.as_bytes(), |_, _| {});
            assert_eq!(
                ours.is_ok(),
                reference(text.as_bytes()),
                "{text:?}: ours {ours:?}"
            );
        }
    }

    /// Every prefix and every one-byte change of a realistic message: the
    /// two readers must agree on each (a cheap, deterministic fuzz).
    #[test]
    fn agrees_with_serde_json_on_mutations_of_a_telemetry_message() {
        let base = br#"{"machine":"vm-1","seq":12,"ts":1795744680436,"temp_c":-4.5e0,"door_open":false,"note":"a\"b\u00e9","stock":[{"slot":"A1","count":10},{"slot":"B2","count":0}],"sale":null}"#;
        let replacements = b"{}[]\",:\\0123456789-+.eEtrufalsn \t\x01\xc3";
        let mut checked = 0;
        let mut check = |bytes: &[u8]| {
            let ours = object(bytes, |_, _| {}).is_ok();
            assert_eq!(
                ours,
                reference(bytes),
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
            checked += 1;
        };
        for end in 0..=base.len() {
            check(&base[..end]);
        }
        for at in 0..base.len() {
            for &r in replacements {
                let mut bytes = base.to_vec();
                bytes[at] = r;
                check(&bytes);
            }
        }
        assert!(checked > 6000, "{checked}");
    }
}
