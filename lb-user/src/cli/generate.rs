//! `lb generate man|completions DIR` (hidden): the man pages and shell completions, rendered
//! from the clap definition of this very binary, so that what `cargo xtask package` ships always
//! describes the `lb` it ships.

use std::path::{Path, PathBuf};

use clap::CommandFactory as _;
use clap_complete::Shell;

use super::Cli;

/// What `lb generate` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Generated {
    /// `lb.8` and one `lb-COMMAND.8` per (visible) command, roff.
    Man,
    /// `lb.bash`, `_lb` (zsh) and `lb.fish`.
    Completions,
}

/// A file that could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {what} into {}", dir.display())]
pub struct GenerateError {
    /// What was being written.
    what: &'static str,
    /// The directory.
    dir: PathBuf,
    /// The error.
    #[source]
    source: std::io::Error,
}

/// The shells completions are written for.
pub const SHELLS: [Shell; 3] = [Shell::Bash, Shell::Zsh, Shell::Fish];

/// Writes `what` into `dir` (created if missing) and returns the files written.
pub fn generate(what: Generated, dir: &Path) -> Result<Vec<PathBuf>, GenerateError> {
    let error = |what| {
        move |source| GenerateError {
            what,
            dir: dir.to_path_buf(),
            source,
        }
    };
    std::fs::create_dir_all(dir).map_err(error("the directory"))?;
    match what {
        Generated::Man => man_pages(dir).map_err(error("man pages")),
        Generated::Completions => SHELLS
            .into_iter()
            .map(|shell| clap_complete::generate_to(shell, &mut visible(), "lb", dir))
            .collect::<Result<_, _>>()
            .map_err(error("completions")),
    }
}

/// `lb` without its hidden commands (clap_complete would offer them).
fn visible() -> clap::Command {
    let full = Cli::command();
    let mut command = clap::Command::new("lb").version(env!("CARGO_PKG_VERSION"));
    if let Some(about) = full.get_about() {
        command = command.about(about.clone());
    }
    command
        .args(full.get_arguments().cloned())
        .subcommands(full.get_subcommands().filter(|s| !s.is_hide_set()).cloned())
}

/// Section 8 (system administration): `lb` runs as root on a gateway.
fn man_pages(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut command = Cli::command().disable_help_subcommand(true);
    command.build();
    let mut written = vec![page(&command, dir, true)?];
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        written.push(page(sub, dir, false)?);
    }
    Ok(written)
}

/// One page: clap_mangen's sections, then the `--help` examples kept as they are laid out
/// (clap_mangen would refill them into one paragraph), then, on `lb(8)`, the sections a man page
/// has and `--help` only summarises.
fn page(command: &clap::Command, dir: &Path, top: bool) -> std::io::Result<PathBuf> {
    let man = clap_mangen::Man::new(command.clone())
        .section("8")
        .manual("lb manual")
        .source(format!("lb {}", env!("CARGO_PKG_VERSION")));
    let path = dir.join(man.get_filename());
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    if command.has_subcommands() {
        man.render_subcommands_section(&mut out)?;
    }
    let after = command
        .get_after_help()
        .map(ToString::to_string)
        .unwrap_or_default();
    let (examples, notes): (Vec<&str>, Vec<&str>) = after
        .split("\n\n")
        .partition(|paragraph| paragraph.starts_with("Example"));
    for paragraph in examples {
        let body = paragraph.split_once('\n').map_or("", |(_, body)| body);
        out.extend(format!(".SH EXAMPLES\n.nf\n{}\n.fi\n", roff_text(body)).bytes());
    }
    if top {
        out.extend(super::help::MAN_SECTIONS.bytes());
    } else if !notes.is_empty() {
        let notes: Vec<String> = notes.into_iter().map(roff_text).collect();
        out.extend(format!(".SH NOTES\n{}\n", notes.join("\n.PP\n")).bytes());
    }
    man.render_version_section(&mut out)?;
    std::fs::write(&path, out)?;
    Ok(path)
}

/// `text` as roff body text: backslashes escaped, no line taken for a request.
fn roff_text(text: &str) -> String {
    text.replace('\\', "\\e")
        .lines()
        .map(|line| {
            if line.starts_with(['.', '\'']) {
                format!("\\&{line}")
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}
