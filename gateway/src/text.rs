//! Text that a guest (or a device) wrote, made safe to print.
//!
//! A guest's log message, topic, KV key or payload ends up in the
//! gateway's log, a terminal running `wasmgate invoke`, or `dlq show`. A
//! newline in it would forge a log line of the gateway's own; ESC and BEL
//! would drive the operator's terminal; bidirectional-text controls would
//! make a line read differently from what it says. So every such character
//! is written as an escape (`\n`, `\u{1b}`), and the text is otherwise kept.

use std::borrow::Cow;

/// `text` with control characters (C0, DEL, C1), Unicode line and paragraph
/// separators and bidirectional controls escaped; borrowed when there are none.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Bytes as text when they are UTF-8, escaped; lossy (U+FFFD) otherwise.
pub fn escape_bytes(bytes: &[u8]) -> String {
    escape(&String::from_utf8_lossy(bytes)).into_owned()
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}' | '\u{061c}')
}

/// A list of names (grants, triggers) for a report line: each escaped,
/// joined by `separator`, or `none` for an empty list.
pub fn or_none(items: &[String], separator: &str) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items
            .iter()
            .map(|i| escape(i).into_owned())
            .collect::<Vec<_>>()
            .join(separator)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newline_cannot_forge_a_log_line() {
        let forged = "ok\n2026-12-02T00:00:00Z  INFO wasmgate::pipeline: gateway stopped";
        let escaped = escape(forged);
        assert!(!escaped.contains('\n'));
        assert!(escaped.starts_with("ok\\n2026"), "{escaped}");
    }

    #[test]
    fn terminal_and_bidi_controls_are_escaped() {
        assert_eq!(escape("\u{1b}[2J\u{7}"), "\\u{1b}[2J\\u{7}");
        assert_eq!(escape("a\u{202e}b"), "a\\u{202e}b");
        assert_eq!(escape("\r\t\u{0}\u{85}"), "\\r\\t\\u{0}\\u{85}");
    }

    #[test]
    fn ordinary_text_is_kept_as_it_is() {
        for text in [
            "temp 9.4 °C",
            "vending/vm-17/alert",
            "日本語",
            "C:\\path",
            "",
        ] {
            assert!(matches!(escape(text), Cow::Borrowed(t) if t == text));
        }
        assert_eq!(escape_bytes(b"\xffok\n"), "\u{fffd}ok\\n");
    }
}
