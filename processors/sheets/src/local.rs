//! The local default, without Google credentials: one CSV file per form,
//! `<organisation>/<form id>.csv`, that any spreadsheet program opens, with the same
//! one-row-per-response semantics as the sheet. A folder per organisation, so that two
//! organisations' forms of the same id never share a file.
//!
//! Invariant: the file is the source of truth and is only ever replaced whole, atomically (a
//! temporary file, synced, renamed over it, the folder synced), so a crash leaves the old file or
//! the new one, never half of one. It is read back on a form's first write after start and after
//! a partition assignment; a row is replaced only by a higher revision of its response.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::Value;

use formstream_core::identity::FormKey;

use crate::api::ApiError;
use crate::layout::{Layout, cell_text};
use crate::sink::{Pending, newest_form};

struct File {
    rows: Vec<Vec<String>>,
    /// The newest partition assignment the file was read for.
    read_for: u64,
}

/// The CSV files of every form, in one folder.
pub struct LocalFiles {
    dir: PathBuf,
    files: Mutex<HashMap<FormKey, File>>,
}

impl LocalFiles {
    pub fn new(dir: PathBuf) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&dir)
            .map_err(|e| anyhow::anyhow!("creating the sheets folder {}: {e}", dir.display()))?;
        Ok(LocalFiles {
            dir,
            files: Mutex::new(HashMap::new()),
        })
    }

    /// `<dir>/<organisation>/<form id>.csv`, the organisation's name escaped ([`folder_name`]).
    pub fn path(&self, form: &FormKey) -> PathBuf {
        self.dir
            .join(folder_name(&form.organisation))
            .join(format!("{}.csv", form.form_id))
    }

    pub fn probe(&self) -> Result<(), ApiError> {
        std::fs::metadata(&self.dir)
            .map(|_| ())
            .map_err(|e| ApiError::Unavailable(format!("{}: {e}", self.dir.display())))
    }

    pub async fn write(&self, form: &FormKey, rows: &[Pending]) -> Vec<Result<(), ApiError>> {
        let outcome = self.write_all(form, rows);
        rows.iter().map(|_| outcome.clone()).collect()
    }

    fn write_all(&self, key: &FormKey, rows: &[Pending]) -> Result<(), ApiError> {
        let form_id = key.form_id.as_str();
        // Form ids are checked by the gateway; a record written around it must not name a path.
        if form_id.is_empty()
            || !form_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(ApiError::Rejected {
                status: 0,
                detail: format!("form id {form_id:?} cannot name a file"),
            });
        }
        let Some(form) = newest_form(rows) else {
            return Ok(());
        };
        let layout = Layout::of(form);
        let path = self.path(key);
        let assignment = rows.iter().map(|p| p.assignment).max().unwrap_or(0);
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        if files.get(key).is_none_or(|f| f.read_for < assignment) {
            let rows = read(&path)
                .map_err(|e| ApiError::Unavailable(format!("reading {}: {e}", path.display())))?;
            files.insert(
                key.clone(),
                File {
                    rows,
                    read_for: assignment,
                },
            );
        }
        let Some(file) = files.get_mut(key) else {
            return Ok(());
        };
        let mut next = file.rows.clone();
        let header: Vec<String> = layout.header().iter().map(cell_text).collect();
        match next.first_mut() {
            Some(held) if held.len() >= header.len() => {}
            Some(held) => *held = header,
            None => next.push(header),
        }
        let mut at: HashMap<String, usize> = next
            .iter()
            .enumerate()
            .skip(1)
            .filter_map(|(i, r)| Some((r.first()?.clone(), i)))
            .collect();
        for pending in rows {
            let response = &pending.response;
            let cells: Vec<String> = layout.row(response).iter().map(csv_cell).collect();
            match at.get(&response.response_id) {
                Some(&i) => {
                    let held = next[i]
                        .get(1)
                        .and_then(|r| r.parse::<i32>().ok())
                        .unwrap_or(0);
                    if held < response.revision {
                        next[i] = cells;
                    }
                }
                None => {
                    at.insert(response.response_id.clone(), next.len());
                    next.push(cells);
                }
            }
        }
        replace(&path, &next)
            .map_err(|e| ApiError::Unavailable(format!("writing {}: {e}", path.display())))?;
        file.rows = next;
        Ok(())
    }
}

/// An organisation's name as one folder name: ASCII letters, digits, `-` and `_` as they are,
/// every other byte as `%XX`, so that any name (`..`, `a/b`, an empty one) stays one folder inside
/// the sheets folder and two names never share one.
pub fn folder_name(organisation: &str) -> String {
    let mut name = String::with_capacity(organisation.len() + 2);
    for byte in organisation.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_' {
            name.push(char::from(byte));
        } else {
            name.push_str(&format!("%{byte:02X}"));
        }
    }
    if name.is_empty() {
        name.push('%');
    }
    name
}

/// A cell as CSV text. A text starting with `=`, `+`, `-` or `@` is prefixed with `'`, so that a
/// spreadsheet program shows it rather than running it as a formula (CSV injection).
fn csv_cell(value: &Value) -> String {
    let text = cell_text(value);
    if value.is_string() && text.starts_with(['=', '+', '-', '@']) {
        format!("'{text}")
    } else {
        text
    }
}

fn read(path: &Path) -> std::io::Result<Vec<Vec<String>>> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(file);
    reader
        .records()
        .map(|r| {
            r.map(|r| r.iter().map(str::to_owned).collect())
                .map_err(std::io::Error::other)
        })
        .collect()
}

/// Writes `rows` to a temporary file beside `path`, syncs it, renames it over `path` and syncs
/// the folder (made first if missing, and then recorded in its own folder).
fn replace(path: &Path, rows: &[Vec<String>]) -> std::io::Result<()> {
    if let Some(dir) = path.parent()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir)?;
        if let Some(parent) = dir.parent()
            && let Ok(parent) = std::fs::File::open(parent)
        {
            parent.sync_all()?;
        }
    }
    let temp = path.with_extension("csv.tmp");
    {
        let file = std::fs::File::create(&temp)?;
        let mut writer = csv::WriterBuilder::new()
            .flexible(true)
            .from_writer(std::io::BufWriter::new(file));
        for row in rows {
            writer.write_record(row).map_err(std::io::Error::other)?;
        }
        let mut inner = writer
            .into_inner()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        inner.flush()?;
        inner.get_ref().sync_all()?;
    }
    std::fs::rename(&temp, path)?;
    if let Some(dir) = path.parent()
        && let Ok(dir) = std::fs::File::open(dir)
    {
        dir.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_organisation_is_one_folder_of_its_own() {
        assert_eq!(folder_name("acme"), "acme");
        assert_eq!(folder_name("Acme Corp"), "Acme%20Corp");
        assert_eq!(folder_name(".."), "%2E%2E");
        assert_eq!(folder_name("a/b"), "a%2Fb");
        assert_ne!(folder_name("a%2Fb"), folder_name("a/b"));
        let files = LocalFiles {
            dir: PathBuf::from("sheets"),
            files: Mutex::new(HashMap::new()),
        };
        assert_eq!(
            files.path(&FormKey::new("acme", "household")),
            Path::new("sheets/acme/household.csv")
        );
        assert_ne!(
            files.path(&FormKey::new("acme", "household")),
            files.path(&FormKey::new("globex", "household"))
        );
    }
}
