//! The organisations file: what each organisation owns outside formstream, read by every
//! component that writes there for it. Today, the existing Google spreadsheets an organisation
//! may export to (docs/design.md, promise 8: every target an effect writes to is one the
//! organisation owns). Every organisation shares the exporter's one service account, so being
//! shared with that account proves nothing about who owns a spreadsheet: the operator says so
//! here, and the gateway (at save time) and the sheets exporter (per record) both check it.
//!
//! ```toml
//! # One table per organisation, named as in the API keys file.
//! [acme]
//! # Existing spreadsheets that acme's forms may name in `sheets.spreadsheet_id`.
//! spreadsheets = ["1BxiMVs0XRA5nFMdKvBdBZjgmUUqptlbs74OgvE2upms"]
//! ```
//!
//! Invariants: a file that cannot be read, has an unknown key (a typo would silently grant
//! nothing), holds something that is not a spreadsheet id, or lists one spreadsheet under two
//! organisations stops the component at start-up; and without a file no organisation owns any
//! existing spreadsheet (forms export with `create: true` only).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use clap::Args;
use formstream_schemas::FormVersion;
use serde::Deserialize;

use crate::problem::FieldProblem;

/// The organisations file flag, shared by the gateway and the sheets exporter (flatten it).
#[derive(Debug, Clone, Default, Args)]
pub struct OrganisationsArgs {
    /// TOML file of what each organisation owns: `[acme]` then `spreadsheets = ["<id>", ...]`,
    /// the existing Google spreadsheets its forms may export to. The gateway refuses (422) a form
    /// naming any other, and the sheets exporter dead-letters its rows; give both the same file.
    /// Unset: no organisation owns an existing spreadsheet (forms export with `create: true`).
    // No default: a spreadsheet is an organisation's only because its operator says so.
    #[arg(long, env = "FORMSTREAM_ORGANISATIONS_FILE")]
    pub organisations_file: Option<PathBuf>,
}

impl OrganisationsArgs {
    /// Reads the file, or no organisations when none is given.
    pub fn load(&self) -> Result<Organisations, OrganisationsError> {
        match &self.organisations_file {
            None => Ok(Organisations::none()),
            Some(path) => Organisations::load(path),
        }
    }
}

/// Why an organisations file was refused.
#[derive(Debug, thiserror::Error)]
pub enum OrganisationsError {
    #[error("could not read the organisations file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the organisations file {path} is not valid: {detail}")]
    Invalid { path: String, detail: String },
}

/// One organisation's table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    #[serde(default)]
    spreadsheets: Vec<String>,
}

/// What each organisation owns; see the module header. Cheap to look up per record.
#[derive(Debug, Clone, Default)]
pub struct Organisations {
    /// Spreadsheet id -> the organisation that owns it (one owner each, checked on load).
    spreadsheets: HashMap<String, String>,
    /// Where it came from, for the messages that say why something was refused.
    source: String,
}

impl Organisations {
    /// No file: nobody owns an existing spreadsheet.
    pub fn none() -> Self {
        Organisations {
            spreadsheets: HashMap::new(),
            source: "--organisations-file is not set".to_owned(),
        }
    }

    pub fn load(path: &Path) -> Result<Self, OrganisationsError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| OrganisationsError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&text, &shown)
    }

    /// Parses the TOML text of an organisations file; `path` names it in messages.
    pub fn parse(text: &str, path: &str) -> Result<Self, OrganisationsError> {
        let invalid = |detail: String| OrganisationsError::Invalid {
            path: path.to_owned(),
            detail,
        };
        let table: HashMap<String, Entry> =
            toml::from_str(text).map_err(|e| invalid(e.message().to_owned()))?;
        let mut spreadsheets: HashMap<String, String> = HashMap::new();
        // Sorted, so that a spreadsheet listed twice is reported the same way every time.
        let mut organisations: Vec<(String, Entry)> = table.into_iter().collect();
        organisations.sort_by(|a, b| a.0.cmp(&b.0));
        for (organisation, entry) in organisations {
            if organisation.trim().is_empty() {
                return Err(invalid("an organisation's name is empty".to_owned()));
            }
            let mut own = HashSet::new();
            for id in entry.spreadsheets {
                if !is_spreadsheet_id(&id) {
                    return Err(invalid(format!(
                        "organisation {organisation:?}: {id:?} is not a spreadsheet id (the part of its URL after /d/)"
                    )));
                }
                if !own.insert(id.clone()) {
                    continue;
                }
                if let Some(other) = spreadsheets.insert(id.clone(), organisation.clone()) {
                    return Err(invalid(format!(
                        "spreadsheet {id} is listed under both {other:?} and {organisation:?}; a spreadsheet belongs to one organisation"
                    )));
                }
            }
        }
        Ok(Organisations {
            spreadsheets,
            source: format!("the organisations file {path}"),
        })
    }

    /// Whether `organisation` owns the existing spreadsheet `spreadsheet_id`.
    pub fn owns_spreadsheet(&self, organisation: &str, spreadsheet_id: &str) -> bool {
        self.spreadsheets
            .get(spreadsheet_id)
            .is_some_and(|owner| owner == organisation)
    }

    /// Where the ownership came from ("the organisations file <path>", or that none was given).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// How many spreadsheets are listed, for start-up logs.
    pub fn spreadsheets(&self) -> usize {
        self.spreadsheets.len()
    }

    /// The problem with `version` for `organisation`, if its sheets action names a spreadsheet
    /// the organisation does not own; for the gateway, at save time. The same answer whether the
    /// spreadsheet is another organisation's or nobody's: it tells nothing about other tenants.
    pub fn check_sheets(&self, organisation: &str, version: &FormVersion) -> Option<FieldProblem> {
        let id = version.sheets.as_ref()?.spreadsheet_id.as_deref()?;
        (!self.owns_spreadsheet(organisation, id)).then(|| {
            FieldProblem::new(
                "/sheets/spreadsheet_id",
                "spreadsheet_not_owned",
                format!(
                    "spreadsheet {id} is not one of your organisation's: an operator must add it to \
                     your organisation's spreadsheets in the organisations file, or use \
                     \"create\": true to have the exporter create one"
                ),
            )
        })
    }
}

/// Google's spreadsheet ids (the part of the URL after `/d/`): URL-safe base64, 44 characters
/// today; 10 to 128 of them accepted, as the gateway does.
fn is_spreadsheet_id(id: &str) -> bool {
    (10..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forms::build::draft_version;

    const A: &str = "1BxiMVs0XRA5nFMdKvBdBZjgmUUqptlbs74OgvE2upms";
    const B: &str = "1ZzYyXxWwVvUuTtSsRrQqPpOoNnMmLlKkJjIiHhGgFfE";

    #[test]
    fn each_organisation_owns_what_is_listed_under_it() {
        let text = format!(
            "[acme]\nspreadsheets = [\"{A}\", \"{A}\"]\n\n[\"Globex Corp\"]\nspreadsheets = [\"{B}\"]\n\n[initech]\n"
        );
        let organisations = Organisations::parse(&text, "orgs.toml").expect("valid");
        assert!(organisations.owns_spreadsheet("acme", A));
        assert!(!organisations.owns_spreadsheet("acme", B));
        assert!(organisations.owns_spreadsheet("Globex Corp", B));
        assert!(!organisations.owns_spreadsheet("initech", A));
        assert!(!organisations.owns_spreadsheet("unknown", A));
        assert_eq!(organisations.spreadsheets(), 2);
        assert!(organisations.source().contains("orgs.toml"));
    }

    #[test]
    fn the_shipped_example_file_is_valid() {
        // docker-compose.yml mounts it into the gateway and the sheets exporter.
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/local/organisations.toml"
        );
        let organisations = Organisations::load(Path::new(path)).expect("a valid example");
        assert!(!organisations.owns_spreadsheet("acme", A));
    }

    #[test]
    fn nothing_is_owned_without_a_file() {
        let organisations = OrganisationsArgs::default().load().expect("no file");
        assert!(!organisations.owns_spreadsheet("acme", A));
        assert!(organisations.source().contains("--organisations-file"));
    }

    #[test]
    fn files_that_would_grant_by_mistake_are_refused() {
        for (text, expected) in [
            (
                format!("[acme]\nspreadsheets = [\"{A}\"]\n[globex]\nspreadsheets = [\"{A}\"]\n"),
                "both \"acme\" and \"globex\"",
            ),
            (
                "[acme]\nspreadsheet = [\"x\"]\n".to_owned(),
                "unknown field",
            ),
            (
                "[acme]\nspreadsheets = [\"https://docs.google.com/x\"]\n".to_owned(),
                "not a spreadsheet id",
            ),
            ("acme = 1\n".to_owned(), "invalid type"),
        ] {
            let error = Organisations::parse(&text, "orgs.toml")
                .expect_err(&text)
                .to_string();
            assert!(
                error.contains("orgs.toml") && error.contains(expected),
                "{error}"
            );
        }
    }

    #[test]
    fn a_form_naming_a_spreadsheet_it_does_not_own_is_a_problem_at_its_pointer() {
        let organisations =
            Organisations::parse(&format!("[acme]\nspreadsheets = [\"{A}\"]\n"), "t").unwrap();
        // A form exporting to `id` (or to a spreadsheet of its own), as the sheets action stores it.
        let version = |id: Option<&str>| {
            let body = serde_json::json!({
                "title": "t",
                "questions": [{"key": "name", "text": "Name", "type": "text"}],
            });
            let body = serde_json::from_value(body).expect("a form body");
            let (mut version, problems) = draft_version(&body, 1, 0);
            assert!(problems.is_empty(), "{problems:?}");
            version.sheets = Some(formstream_schemas::Sheets {
                spreadsheet_id: id.map(str::to_owned),
            });
            version
        };
        assert!(
            organisations
                .check_sheets("acme", &version(Some(A)))
                .is_none()
        );
        assert!(organisations.check_sheets("acme", &version(None)).is_none());
        let problem = organisations
            .check_sheets("globex", &version(Some(A)))
            .expect("not globex's");
        assert_eq!(problem.pointer, "/sheets/spreadsheet_id");
        assert_eq!(problem.code, "spreadsheet_not_owned");
        // Another organisation's and nobody's read the same.
        let nobodys = organisations
            .check_sheets("globex", &version(Some(B)))
            .expect("nobody's");
        assert_eq!(
            problem.detail.replace(A, "<id>"),
            nobodys.detail.replace(B, "<id>")
        );
    }
}
