//! What a benchmark binary prints: sections, each a table with the paragraph saying how it was
//! measured and notes. `--json` prints a JSON array of sections on stdout (and nothing else, so
//! `cargo xtask bench` can render it into `docs/BENCHMARKS.md`); otherwise aligned text.
//! Progress goes to stderr.

use serde_json::{json, Value};

/// One table of results.
#[derive(Clone, Debug, Default)]
pub struct Section {
    /// Heading.
    pub title: String,
    /// One paragraph: how the figures were measured.
    pub method: String,
    /// Column headings.
    pub columns: Vec<String>,
    /// Rows of cells, as many as `columns`.
    pub rows: Vec<Vec<String>>,
    /// Remarks printed under the table.
    pub notes: Vec<String>,
}

impl Section {
    /// A section with its heading, method paragraph and columns; rows and notes are added later.
    pub fn new(title: &str, method: &str, columns: &[&str]) -> Self {
        Self {
            title: title.to_owned(),
            method: method.to_owned(),
            columns: columns.iter().map(|c| (*c).to_owned()).collect(),
            ..Self::default()
        }
    }

    /// Appends a row.
    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.columns.len(), "row of {}", self.title);
        self.rows.push(cells);
    }

    /// The section as the JSON object of the output contract.
    pub fn to_json(&self) -> Value {
        let Self {
            title,
            method,
            columns,
            rows,
            notes,
        } = self;
        json!({"title": title, "method": method, "columns": columns, "rows": rows, "notes": notes})
    }

    /// The section as text: title, method, a table with columns padded to their widest cell
    /// (right-aligned, except the first column), notes.
    pub fn to_text(&self) -> String {
        let Self {
            title,
            method,
            columns,
            rows,
            notes,
        } = self;
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
                .enumerate()
                .map(|(i, (cell, width))| {
                    if i == 0 {
                        format!("{cell:<width$}")
                    } else {
                        format!("{cell:>width$}")
                    }
                })
                .collect();
            padded.join("  ").trim_end().to_owned()
        };
        let mut text = format!("== {title}\n{method}\n\n{}\n", line(columns));
        for row in rows {
            text += &line(row);
            text.push('\n');
        }
        for note in notes {
            text += &format!("note: {note}\n");
        }
        text
    }
}

/// Prints `sections` on stdout: a JSON array with `json`, else text separated by blank lines.
pub fn print(sections: &[Section], json: bool) {
    if json {
        let array: Vec<Value> = sections.iter().map(Section::to_json).collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&array).expect("JSON of strings")
        );
    } else {
        let texts: Vec<String> = sections.iter().map(Section::to_text).collect();
        print!("{}", texts.join("\n"));
    }
}

/// The `main` of a benchmark binary `name`: reads `--json` (see [`json_flag`]), runs `run` and
/// prints its sections; exit status 2 on a bad argument, 1 if `run` fails.
pub fn run_main(
    name: &str,
    about: &str,
    run: impl FnOnce() -> anyhow::Result<Vec<Section>>,
) -> std::process::ExitCode {
    let json = match json_flag(about) {
        Ok(json) => json,
        Err(message) => {
            eprintln!("{message}");
            return std::process::ExitCode::from(2);
        }
    };
    match run() {
        Ok(sections) => {
            print(&sections, json);
            std::process::ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("{name}: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Whether `--json` was given; any other argument is an error (with `--help` text) so a typo
/// does not silently run a long benchmark in the wrong mode.
pub fn json_flag(about: &str) -> Result<bool, String> {
    let mut json = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--json" => json = true,
            "-h" | "--help" => {
                return Err(format!(
                    "{about}\n\nusage: [--json]   (--json: a JSON array of sections on stdout)"
                ))
            }
            other => {
                return Err(format!(
                    "unknown argument {other:?} (the only option is --json)"
                ))
            }
        }
    }
    Ok(json)
}

/// Median of `values` (the mean of the middle two for an even count); `None` when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

/// Largest of `values`; `None` when empty.
pub fn max(values: &[f64]) -> Option<f64> {
    values.iter().copied().max_by(f64::total_cmp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_pads_columns_and_json_keeps_every_field() {
        let mut section = Section::new("t", "how", &["name", "value"]);
        section.row(vec!["a".into(), "1".into()]);
        section.row(vec!["long name".into(), "22".into()]);
        section.notes.push("n".into());
        assert_eq!(
            section.to_text(),
            "== t\nhow\n\nname       value\na              1\nlong name     22\nnote: n\n"
        );
        let json = section.to_json();
        assert_eq!(json["rows"][1][0], "long name");
        assert_eq!(json["columns"].as_array().map(Vec::len), Some(2));
        assert_eq!(json["notes"][0], "n");
    }

    #[test]
    fn median_and_max() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(max(&[1.0, 5.0, 2.0]), Some(5.0));
    }
}
