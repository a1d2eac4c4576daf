//! Errors that name the file, the line and column (1-based) and the key path of the offending
//! value, like `lb.toml:14:11: vip[1].backend[0].weight: weight must be between 0 and 10000`.

use std::{ops::Range, path::PathBuf};

use toml::{
    de::{DeTable, DeValue},
    Spanned,
};

/// A configuration that cannot be read, parsed or validated.
///
/// Displays as `file:line:column: key: message`, leaving out the parts that are unknown. An
/// error with neither a line nor a key is about the whole file (it could not be read): it
/// displays as its message alone, which names the file (`cannot read lb.toml: ...`).
#[derive(Debug, thiserror::Error)]
#[error("{}", render(self))]
pub struct ConfigError {
    /// The configuration file.
    pub file: PathBuf,
    /// 1-based line of the offending text.
    pub line: Option<usize>,
    /// 1-based column (in characters) of the offending text.
    pub column: Option<usize>,
    /// Key path of the offending value, like `vip[0].backend[2].address`.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

fn render(error: &ConfigError) -> String {
    if error.line.is_none() && error.key.is_none() {
        return error.message.clone();
    }
    let mut out = error.file.display().to_string();
    if let Some(line) = error.line {
        out.push_str(&format!(":{line}"));
        if let Some(column) = error.column {
            out.push_str(&format!(":{column}"));
        }
    }
    out.push_str(": ");
    if let Some(key) = &error.key {
        out.push_str(key);
        out.push_str(": ");
    }
    out.push_str(&error.message);
    out
}

/// The I/O error's text without the ` (os error N)` suffix.
pub(super) fn io_message(error: &std::io::Error) -> String {
    let text = error.to_string();
    match text.find(" (os error ") {
        Some(end) => text[..end].to_owned(),
        None => text,
    }
}

/// 1-based line and column (in characters) of byte `offset` of `text`.
pub(super) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    (line, before[line_start..].chars().count() + 1)
}

pub(super) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// The key path (`vip[0].backend[2].address`) of the smallest key or value of the document
/// that contains `span`: the empty path for the document itself, `None` if the text does not
/// parse.
pub(super) fn key_path_at(text: &str, span: &Range<usize>) -> Option<String> {
    let document = DeTable::parse(text).ok()?;
    let mut best: Option<(usize, String)> = None;
    if !span.is_empty() {
        visit_table(document.get_ref(), "", span, &mut best);
    }
    Some(best.map(|(_, path)| path).unwrap_or_default())
}

fn consider(
    node: Range<usize>,
    path: &str,
    span: &Range<usize>,
    best: &mut Option<(usize, String)>,
) {
    if node.start <= span.start && span.end <= node.end {
        let length = node.end - node.start;
        if best
            .as_ref()
            .is_none_or(|(best_length, _)| length <= *best_length)
        {
            *best = Some((length, path.to_owned()));
        }
    }
}

fn visit_table(
    table: &DeTable<'_>,
    path: &str,
    span: &Range<usize>,
    best: &mut Option<(usize, String)>,
) {
    for (key, value) in table {
        let key_path = join(path, key.get_ref());
        consider(key.span(), &key_path, span, best);
        visit_value(value, &key_path, span, best);
    }
}

#[expect(
    clippy::wildcard_enum_match_arm,
    reason = "scalars hold no keys: only tables and arrays are walked"
)]
fn visit_value(
    value: &Spanned<DeValue<'_>>,
    path: &str,
    span: &Range<usize>,
    best: &mut Option<(usize, String)>,
) {
    consider(value.span(), path, span, best);
    match value.get_ref() {
        DeValue::Table(table) => visit_table(table, path, span, best),
        DeValue::Array(array) => {
            for (index, item) in array.iter().enumerate() {
                visit_value(item, &format!("{path}[{index}]"), span, best);
            }
        }
        _ => {}
    }
}
