//! The README's results block: where it is, replacing it, and checking a table.
use super::*;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::results::Summary;

/// Replaces what lies between the markers (adding them at the end when absent).
/// Where a run's block goes in the README: the default matrix's block, or one of its
/// own per other matrix file (`matrix-peers.toml` → "matrix-peers"), with links that
/// reach the run's outputs from the README's folder.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Block {
    /// None for matrix.toml.
    pub name: Option<String>,
    /// The outputs' folder relative to the README's, with a trailing '/' ("" when the same).
    pub dir: String,
}

impl Block {
    pub fn new(matrix_file: &str, out: &Path, readme: &Path) -> Self {
        let base = match readme.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let dir = match (base.canonicalize(), out.canonicalize()) {
            (Ok(b), Ok(o)) if o != b => {
                format!("{}/", crate::environment::relative(&b, &o).display())
            }
            _ => String::new(),
        };
        Self {
            name: Self::name_of(matrix_file),
            dir,
        }
    }

    /// A matrix file's block name: None for matrix.toml, else its stem.
    pub fn name_of(matrix_file: &str) -> Option<String> {
        let stem = Path::new(matrix_file).file_stem()?.to_string_lossy();
        (stem != "matrix" && !stem.is_empty()).then(|| stem.to_string())
    }

    pub fn begin(&self) -> String {
        match &self.name {
            None => BEGIN.to_string(),
            Some(n) => BEGIN.replace("results:begin", &format!("results:begin {n}")),
        }
    }

    pub fn end(&self) -> String {
        match &self.name {
            None => END.to_string(),
            Some(n) => END.replace("results:end", &format!("results:end {n}")),
        }
    }

    /// The block's text between its markers, if the README has it.
    pub fn find<'a>(&self, readme: &'a str) -> Option<&'a str> {
        let (b, e) = (readme.find(&self.begin())?, readme.find(&self.end())?);
        readme.get(b..e)
    }
}

/// The page a matrix's published block lives on: README.md, or the page under docs/
/// that holds its markers (long ladders are kept out of README); README.md when none does.
pub fn page_for(root: &Path, matrix_file: &str) -> PathBuf {
    let begin = Block::new(matrix_file, root, &root.join("README.md")).begin();
    let readme = root.join("README.md");
    let holds = |p: &Path| std::fs::read_to_string(p).is_ok_and(|t| t.contains(&begin));
    if holds(&readme) {
        return readme;
    }
    let mut pages: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    pages.sort();
    pages.into_iter().find(|p| holds(p)).unwrap_or(readme)
}

pub fn update_readme(readme: &str, s: &Summary, at: &Block) -> Result<String> {
    let (begin, end, dir) = (at.begin(), at.end(), &at.dir);
    let charts: String = crate::charts::markdown(s)
        .lines()
        .map(|l| format!("{}\n", l.replacen("](", &format!("]({dir}"), 1)))
        .collect();
    let headline = s
        .blocks
        .as_ref()
        .map(|b| crate::blocks::render::headline(s, b))
        .unwrap_or_default();
    // A curve's points are not rungs: its table, not a ladder's headline.
    let headline = match super::curve_table(s) {
        Some(curve) => format!("{curve}\n"),
        None => headline,
    };
    let block = format!(
        "{begin}\n_Run of {} on {} (commit `{}`); full details in [results.md]({dir}results.md)._\n\n{headline}{}\n{charts}{end}",
        s.environment.date, s.environment.host.describe(), s.environment.git_commit, table(s)
    );
    match (readme.find(&begin), readme.find(&end)) {
        (Some(b), Some(e)) if b < e => Ok(format!(
            "{}{}{}",
            &readme[..b],
            block,
            &readme[e + end.len()..]
        )),
        (None, None) => Ok(format!("{}\n{}\n", readme.trim_end(), block)),
        _ => bail!("README has a broken results block: one marker without the other"),
    }
}

/// A row reported as failed: its table line says FAILED and has no numbers, and its
/// section gives a reason containing `because`.
pub fn check_failed(text: &str, name: &str, because: &str) -> Result<()> {
    let prefix = format!("| {name} |");
    let Some(line) = text.lines().find(|l| l.starts_with(&prefix)) else {
        bail!("row {name:?} is missing from the table");
    };
    if !line.contains("**FAILED**") || !line.contains(" failed |") {
        bail!("row {name:?} is not shown as failed: {line}");
    }
    let section = text
        .split(&format!("\n### {name} — "))
        .nth(1)
        .with_context(|| format!("row {name:?} has no section"))?;
    let section = section.split("\n### ").next().unwrap_or(section);
    if !section
        .lines()
        .any(|l| l.starts_with("- **FAILED: ") && l.contains(because))
    {
        bail!("row {name:?}'s section gives no failure that says {because:?}");
    }
    Ok(())
}

/// Checks that a rendered table has a numeric capacity cell per workload for every named row.
pub fn check_table(text: &str, rows: &[String], workloads: usize) -> Result<()> {
    for name in rows {
        let prefix = format!("| {name} |");
        let lines: Vec<&str> = text.lines().collect();
        let Some(at) = lines.iter().position(|l| l.starts_with(&prefix)) else {
            bail!("row {name:?} is missing from the table");
        };
        // The numbers start after the name, and after the blocks table's "Adds".
        let header = lines[..at].iter().rev().find(|l| l.starts_with("| Row |"));
        let skip = if header.is_some_and(|h| h.starts_with("| Row | Adds |")) {
            2
        } else {
            1
        };
        let cells: Vec<&str> = lines[at]
            .trim_matches('|')
            .split('|')
            .map(str::trim)
            .collect();
        for (i, cell) in cells.iter().skip(skip).take(workloads).enumerate() {
            let number = cell.trim_start_matches("≥ ");
            if !number.chars().next().is_some_and(|c| c.is_ascii_digit()) {
                bail!(
                    "row {name:?}: cell {} is not a number: {cell:?}",
                    i + skip + 1
                );
            }
        }
    }
    Ok(())
}
