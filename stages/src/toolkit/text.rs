//! Text helpers of the generation kinds: prompt templates, sentence
//! splitting, list markers; and CSV field quoting for the kinds that write
//! CSV.

/// Fills `{name}` placeholders of a prompt template.
pub fn fill(template: &str, vars: &[(&str, &str)]) -> String {
    let mut out = template.to_string();
    for (k, v) in vars {
        out = out.replace(&format!("{{{k}}}"), v);
    }
    out
}

/// Splits text into sentences (ends at `.`, `!`, `?` followed by space or the end).
pub fn sentences(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        cur.push(c);
        i += 1;
        if !matches!(c, '.' | '!' | '?') {
            continue;
        }
        // A closing quote after the punctuation belongs to the sentence.
        let mut j = i;
        while j < chars.len() && matches!(chars[j], '"' | '\u{201d}' | '\'') {
            j += 1;
        }
        if chars.get(j).is_none_or(|n| n.is_whitespace()) {
            cur.extend(&chars[i..j]);
            i = j;
            let s = cur.trim().to_string();
            if !s.is_empty() {
                out.push(s);
            }
            cur.clear();
        }
    }
    let rest = cur.trim();
    if !rest.is_empty() {
        out.push(rest.to_string());
    }
    out
}

/// Removes list markers (`1.`, `-`, `*`, `Q1:`) and quotes around a line.
pub fn strip_marker(line: &str) -> String {
    let mut s = line.trim();
    s = s.trim_start_matches(['-', '*', '•']).trim_start();
    let digits = s.chars().take_while(char::is_ascii_digit).count();
    if digits > 0 {
        let rest = &s[digits..];
        if let Some(r) = rest.strip_prefix(['.', ')', ':']) {
            s = r.trim_start();
        }
    }
    s.trim_matches(['"', '*', '\'']).trim().to_string()
}

/// CSV text written by the `csv` crate (RFC 4180 quoting), row by row.
pub struct CsvText {
    writer: csv::Writer<Vec<u8>>,
}

impl CsvText {
    /// A table with this header row.
    pub fn new<F: AsRef<[u8]>>(header: impl IntoIterator<Item = F>) -> Self {
        let mut text = CsvText {
            // Flexible: a row's width is the caller's business (tables pad their own).
            writer: csv::WriterBuilder::new()
                .flexible(true)
                .from_writer(Vec::new()),
        };
        text.row(header);
        text
    }

    pub fn row<F: AsRef<[u8]>>(&mut self, fields: impl IntoIterator<Item = F>) {
        // Writing to memory: the only errors csv has are I/O errors of the sink.
        let _ = self.writer.write_record(fields);
    }

    pub fn finish(self) -> String {
        let bytes = self.writer.into_inner().unwrap_or_default();
        // Every field came in as UTF-8 text, and csv only adds ASCII.
        String::from_utf8(bytes).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_split_on_terminal_punctuation() {
        let s = sentences("Tom ran. He fell! Why? Mr. X came. \"Yes.\" done");
        assert_eq!(s[0], "Tom ran.");
        assert_eq!(s[1], "He fell!");
        assert_eq!(s[2], "Why?");
        assert_eq!(s[s.len() - 2], "\"Yes.\"");
        assert_eq!(s.last().unwrap(), "done");
    }

    #[test]
    fn markers_are_stripped() {
        assert_eq!(strip_marker("1. Time travel"), "Time travel");
        assert_eq!(strip_marker("- \"Betrayal\""), "Betrayal");
        assert_eq!(strip_marker("12) **Space**"), "Space");
    }

    #[test]
    fn fill_replaces_placeholders() {
        assert_eq!(
            fill("a {x} b {x} {y}", &[("x", "1"), ("y", "2")]),
            "a 1 b 1 2"
        );
    }

    #[test]
    fn csv_fields_are_quoted_when_they_need_it() {
        let mut t = CsvText::new(["a", "b"]);
        t.row(["plain", "a,b"]);
        t.row(["say \"hi\"", "line\r\nbreak"]);
        assert_eq!(
            t.finish(),
            "a,b\nplain,\"a,b\"\n\"say \"\"hi\"\"\",\"line\r\nbreak\"\n"
        );
    }
}
