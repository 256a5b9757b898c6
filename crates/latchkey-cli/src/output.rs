//! What commands print on standard output: JSON for `--json`, aligned tables and
//! `key: value` blocks otherwise. A closed pipe (`latchkey servers list | head`) is not
//! an error. Diagnostics go to standard error, never here.

use std::io::Write as _;

use serde_json::Value;

/// Writes `text` and a newline to standard output.
pub(crate) fn line(text: impl std::fmt::Display) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

/// Writes `v` as indented JSON.
pub(crate) fn json(v: &Value) {
    line(serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string()));
}

/// A table with a header row; columns are padded to their widest cell.
#[derive(Debug)]
pub(crate) struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(crate) fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as text, one line per row, no trailing spaces.
    pub(crate) fn render(&self) -> String {
        let n = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate().take(n) {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
        let mut out = String::new();
        for r in std::iter::once(&self.header).chain(&self.rows) {
            let mut l = String::new();
            for (i, c) in r.iter().enumerate().take(n) {
                if i + 1 < n {
                    l.push_str(c);
                    l.push_str(&" ".repeat(widths[i] - c.chars().count() + 2));
                } else {
                    l.push_str(c);
                }
            }
            out.push_str(l.trim_end());
            out.push('\n');
        }
        out
    }

    pub(crate) fn print(&self) {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(self.render().as_bytes());
        let _ = out.flush();
    }
}

/// `key: value` lines with the values aligned.
pub(crate) fn fields(pairs: &[(&str, String)]) {
    let w = pairs
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (k, v) in pairs {
        out.push_str(&format!("{k}:{} {v}\n", " ".repeat(w - k.chars().count())));
    }
    let mut o = std::io::stdout().lock();
    let _ = o.write_all(out.as_bytes());
    let _ = o.flush();
}

/// A JSON string field as text (`-` when absent or null).
pub(crate) fn text(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".into(),
        Some(other) => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_aligned() {
        let mut t = Table::new(&["ID", "NAME", "URL"]);
        t.row(vec!["1".into(), "a long name".into(), "http://x".into()]);
        t.row(vec!["22".into(), "b".into(), "".into()]);
        assert_eq!(
            t.render(),
            "ID  NAME         URL\n1   a long name  http://x\n22  b\n"
        );
    }
}
