//! A fixed-size text buffer for log lines, so logging needs no allocator.

use core::fmt;

/// A log line of at most [`LogLine::CAPACITY`] bytes. Writes past the end are
/// cut at a character boundary and the line ends in `...`: the host cuts long
/// lines anyway, and a log call must never fail an invocation.
pub struct LogLine {
    buf: [u8; LogLine::CAPACITY],
    len: usize,
    cut: bool,
}

impl LogLine {
    pub const CAPACITY: usize = 256;
    const ELLIPSIS: &'static str = "...";

    pub const fn new() -> Self {
        LogLine {
            buf: [0; LogLine::CAPACITY],
            len: 0,
            cut: false,
        }
    }

    pub fn as_str(&self) -> &str {
        // Only whole `&str`s and char-boundary cuts of them are ever copied in.
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }

    pub fn push_str(&mut self, s: &str) {
        if self.cut {
            return;
        }
        if s.len() <= Self::CAPACITY - self.len {
            self.buf[self.len..self.len + s.len()].copy_from_slice(s.as_bytes());
            self.len += s.len();
            return;
        }
        // Cut: keep what fits before the ellipsis, at a character boundary.
        self.cut = true;
        let text_room = Self::CAPACITY - Self::ELLIPSIS.len();
        if self.len > text_room {
            let mut keep = text_room;
            while !self.as_str().is_char_boundary(keep) {
                keep -= 1;
            }
            self.len = keep;
        } else {
            let mut keep = text_room - self.len;
            while !s.is_char_boundary(keep) {
                keep -= 1;
            }
            self.buf[self.len..self.len + keep].copy_from_slice(&s.as_bytes()[..keep]);
            self.len += keep;
        }
        let end = self.len + Self::ELLIPSIS.len();
        self.buf[self.len..end].copy_from_slice(Self::ELLIPSIS.as_bytes());
        self.len = end;
    }

    /// Appends a decimal integer without going through `core::fmt`.
    pub fn push_int(&mut self, n: i64) {
        if n < 0 {
            self.push_str("-");
        }
        self.push_str(decimal(n.unsigned_abs(), &mut [0; 20]));
    }
}

impl Default for LogLine {
    fn default() -> Self {
        LogLine::new()
    }
}

impl fmt::Write for LogLine {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.push_str(s);
        Ok(())
    }
}

impl fmt::Debug for LogLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// `n` in decimal, written into `buf`: for functions that build text
/// without `core::fmt`, which is large in Wasm and slow under an
/// interpreter. (`u64`, not a wider type: 128-bit division is a software
/// routine on wasm32.)
pub fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &str {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // ASCII digits are always valid UTF-8.
    core::str::from_utf8(&buf[at..]).unwrap_or("?")
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::fmt::Write;

    #[test]
    fn short_lines_are_kept_whole() {
        let mut line = LogLine::new();
        let machine = "vm-17";
        write!(line, "temp {} on {machine}", 7).unwrap();
        assert_eq!(line.as_str(), "temp 7 on vm-17");
    }

    #[test]
    fn long_lines_are_cut_with_an_ellipsis_and_never_fail() {
        let mut line = LogLine::new();
        for _ in 0..100 {
            write!(line, "0123456789").unwrap();
        }
        assert_eq!(line.as_str().len(), LogLine::CAPACITY);
        assert!(line.as_str().ends_with("..."));
    }

    #[test]
    fn cutting_never_splits_a_character() {
        let mut line = LogLine::new();
        line.push_str(&"a".repeat(LogLine::CAPACITY - 5));
        line.push_str("ééééé");
        assert!(line.as_str().ends_with("..."));
        assert!(line.as_str().len() <= LogLine::CAPACITY);
        assert!(line.as_str().contains('é'));
    }

    #[test]
    fn integers_are_written_without_fmt() {
        let mut line = LogLine::new();
        line.push_int(0);
        line.push_str(" ");
        line.push_int(-42);
        line.push_str(" ");
        line.push_int(i64::MIN);
        assert_eq!(line.as_str(), "0 -42 -9223372036854775808");
        assert_eq!(
            super::decimal(u64::MAX, &mut [0; 20]),
            "18446744073709551615"
        );
    }
}
