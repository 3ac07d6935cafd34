//! Text that a guest (or a node) controls, made safe to print on an
//! operator's terminal: control characters are shown escaped, so a log
//! line cannot move the cursor, recolour the screen, rewrite the start of
//! its line or fake where it came from. Ordinary Unicode is kept.

use std::borrow::Cow;
use std::fmt::Write as _;

/// `text` with every control character escaped: C0 controls except tab
/// (`\r`, `\n`, `\x1b`, ...), DEL, C1 controls (`\u{9b}`, ...), and the
/// bidirectional overrides and isolates that reorder what follows
/// (`\u{202e}`, ...). Borrowed when there is nothing to escape.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(escaped) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\r' => out.push_str("\\r"),
            '\n' => out.push_str("\\n"),
            '\0' => out.push_str("\\0"),
            c if escaped(c) && (c as u32) < 0x80 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if escaped(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Whether `c` is shown escaped.
fn escaped(c: char) -> bool {
    (c.is_control() && c != '\t')
        || matches!(
            c,
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn control_characters_are_escaped_and_unicode_kept() {
        assert!(matches!(
            printable("plain text"),
            std::borrow::Cow::Borrowed(_)
        ));
        assert_eq!(printable("tab\tstays"), "tab\tstays");
        assert_eq!(printable("héllo wörld ✓ 日本 🚀"), "héllo wörld ✓ 日本 🚀");
        assert_eq!(printable("\u{1b}[31mred\u{1b}[0m"), "\\x1b[31mred\\x1b[0m");
        assert_eq!(
            printable("x\rnode-9 other/app | fake"),
            "x\\rnode-9 other/app | fake"
        );
        assert_eq!(printable("a\nb\0c\u{7}"), "a\\nb\\0c\\x07");
        assert_eq!(printable("del\u{7f}"), "del\\x7f");
        // C1: a single-byte CSI, and NEL.
        assert_eq!(printable("\u{9b}2J\u{85}"), "\\u{9b}2J\\u{85}");
        assert_eq!(printable("abc\u{202e}fed"), "abc\\u{202e}fed");
        // A backslash is left alone: the escapes show as text, never act.
        assert_eq!(printable("C:\\dir"), "C:\\dir");
    }
}
