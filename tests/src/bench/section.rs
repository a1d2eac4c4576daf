//! A benchmark result as a titled table with its method and notes: printed as aligned text, or
//! as JSON for `cargo xtask bench`, which renders the sections into `docs/BENCHMARKS.md`.
//!
//! The JSON contract: an array of sections, each
//! `{"title": str, "method": str, "columns": [str...], "rows": [[str...]...], "notes": [str...]}`.

use std::fmt::Write as _;

/// One table of results.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Section {
    /// Heading.
    pub title: String,
    /// One paragraph: how the figures were measured.
    pub method: String,
    /// Column headings.
    pub columns: Vec<String>,
    /// Rows, each with one cell per column.
    pub rows: Vec<Vec<String>>,
    /// Remarks printed under the table.
    pub notes: Vec<String>,
}

impl Section {
    /// The section as a JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        let Self { title, method, columns, rows, notes } = self;
        serde_json::json!({
            "title": title,
            "method": method,
            "columns": columns,
            "rows": rows,
            "notes": notes,
        })
    }

    /// The section as text: title, method, an aligned table, notes.
    pub fn to_text(&self) -> String {
        let Self { title, method, columns, rows, notes } = self;
        let mut widths: Vec<usize> = columns.iter().map(|c| c.chars().count()).collect();
        for row in rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let padded: Vec<String> = cells
                .iter()
                .zip(&widths)
                .map(|(cell, width)| format!("{cell}{}", " ".repeat(width - cell.chars().count())))
                .collect();
            padded.join("  ").trim_end().to_string()
        };
        let mut out = String::new();
        let _ = writeln!(out, "{title}\n{}\n\n{method}\n", "=".repeat(title.chars().count()));
        let _ = writeln!(out, "{}", line(columns));
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        let _ = writeln!(out, "{}", line(&rule));
        for row in rows {
            let _ = writeln!(out, "{}", line(row));
        }
        for note in notes {
            let _ = writeln!(out, "\n- {note}");
        }
        out
    }
}

/// Sections as the JSON array `cargo xtask bench` reads.
pub fn to_json(sections: &[Section]) -> String {
    let array: Vec<serde_json::Value> = sections.iter().map(Section::to_json).collect();
    serde_json::to_string_pretty(&array).expect("sections are plain strings")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Section {
        Section {
            title: "T".into(),
            method: "M".into(),
            columns: vec!["a".into(), "bb".into()],
            rows: vec![vec!["xxx".into(), "y".into()]],
            notes: vec!["n".into()],
        }
    }

    #[test]
    fn json_keeps_the_contract() {
        let value: serde_json::Value = serde_json::from_str(&to_json(&[sample()])).unwrap();
        assert_eq!(
            value,
            serde_json::json!([{"title": "T", "method": "M", "columns": ["a", "bb"], "rows": [["xxx", "y"]], "notes": ["n"]}])
        );
    }

    #[test]
    fn text_aligns_columns() {
        let text = sample().to_text();
        assert!(text.contains("a    bb\n---  --\nxxx  y\n"), "{text}");
    }
}
