//! The Google Sheets target: per form (organisation, form id), a chain of spreadsheets ("parts"), each with one tab
//! [`TAB`] holding a header row and one row per response.
//!
//! Exactly once, with the sheet as the source of truth:
//! - Before a form's first write after start, and again whenever a record comes from a newer
//!   assignment of its partition (the partition may have been processed elsewhere meanwhile),
//!   or after a write whose outcome is unknown, the response-id and revision columns of every
//!   part are read back (`values.batchGet` of `A:B`). That read-back is the index: which response
//!   has which row, at which revision.
//! - A response not in the index is appended; one in it at a lower revision is rewritten in place
//!   (`values.batchUpdate` of its row); one at the same or a higher revision is already done.
//! - An append is not idempotent. If its answer is lost (a timeout, a 5xx, a crash before the
//!   offset commit), the rows may be in the sheet: the index is marked stale, and the retry (or
//!   the next owner of the partition, after a crash) reads the sheet back first, finds them, and
//!   does not append them again.
//! - Parts after the first (and a first part the exporter creates) are recorded in the effect
//!   ledger (a compacted Kafka topic), under the form's organisation and id: `attempted` before
//!   `spreadsheets.create`, `done` with the new id after. A crash between the two leaves at most an empty spreadsheet behind (logged with
//!   its title), never rows in a spreadsheet the read-back does not know.
//!
//! Rollover: a part's cells (every tab's grid, as Google counts them) never pass the cell limit;
//! rows that would are written to a new part titled `<title> (formstream <form id>, part N)`,
//! with the header repeated.
//!
//! Residual risk, stated: two instances writing the same form at once (a rebalance while an
//! append is in flight on the old owner) can append a row twice; the append's answer then lands
//! on an unexpected row, which is logged and makes the index reload.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use formstream_core::identity::FormKey;
use formstream_runtime::{Entry, Ledger};
use formstream_schemas::Form;
use serde_json::Value;

use crate::api::{ApiError, SheetsApi, Tab, column_letters};
use crate::layout::{Layout, row_bytes};
use crate::sink::{Pending, newest_form};

/// The tab every part writes to.
pub const TAB: &str = "responses";

/// Where a form's first part is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Home {
    Named(String),
    Created,
}

/// One spreadsheet of a form's chain.
#[derive(Debug, Clone)]
struct Part {
    spreadsheet_id: String,
    sheet_id: i64,
    /// Rows holding data, the header included (the next append lands on `rows + 1`).
    rows: u64,
    /// The tab's grid, as Google counts cells.
    grid_rows: u64,
    grid_columns: u64,
    /// Cells of the spreadsheet's other tabs.
    other_cells: u64,
    /// Cells in the header row (0: not written yet).
    header_width: u64,
    /// Google said it is at the cell limit: new rows go to the next part.
    full: bool,
}

impl Part {
    /// Rows that can still be appended at `width` columns within `limit` cells.
    fn room(&self, width: u64, limit: u64) -> u64 {
        if self.full {
            return 0;
        }
        let columns = self.grid_columns.max(width).max(1);
        // INSERT_ROWS grows the grid by the rows appended.
        (limit.saturating_sub(self.other_cells) / columns).saturating_sub(self.grid_rows)
    }
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    part: usize,
    row: u64,
    revision: i32,
}

/// What is known about one form's spreadsheets.
#[derive(Debug)]
struct Book {
    home: Home,
    parts: Vec<Part>,
    index: HashMap<String, Slot>,
    /// The newest partition assignment the index was read back for; `None`: never read.
    read_for: Option<u64>,
    /// A write's outcome is unknown: read back before the next one.
    stale: bool,
}

/// The Google target.
pub struct Google {
    api: SheetsApi,
    ledger: Ledger,
    cell_limit: u64,
    max_request_bytes: usize,
    /// Per form: two organisations' forms of the same id are two books, two chains.
    books: Mutex<HashMap<FormKey, Arc<tokio::sync::Mutex<Book>>>>,
}

impl Google {
    pub fn new(api: SheetsApi, ledger: Ledger, cell_limit: u64, max_request_bytes: usize) -> Self {
        Google {
            api,
            ledger,
            cell_limit,
            max_request_bytes,
            books: Mutex::new(HashMap::new()),
        }
    }

    /// One cheap read: any answer but a 429/5xx or no answer means the API is back.
    pub async fn probe(&self) -> Result<(), ApiError> {
        match self.api.tabs("formstream-probe").await {
            Ok(_) | Err(ApiError::Rejected { .. }) => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// Whether `spreadsheet_id` can be written again: any answer but a 429/5xx, a refusal of
    /// access or no answer. (For a chain the exporter creates, `spreadsheet_id` is its form id,
    /// which Google answers 404: the API answers.)
    pub async fn probe_spreadsheet(&self, spreadsheet_id: &str) -> Result<(), ApiError> {
        match self.api.tabs(spreadsheet_id).await {
            Ok(_) | Err(ApiError::Rejected { .. }) => Ok(()),
            Err(error) => Err(error),
        }
    }

    fn book(&self, key: &FormKey, home: &Home) -> Arc<tokio::sync::Mutex<Book>> {
        let mut books = self.books.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = || {
            Arc::new(tokio::sync::Mutex::new(Book {
                home: home.clone(),
                parts: Vec::new(),
                index: HashMap::new(),
                read_for: None,
                stale: true,
            }))
        };
        let book = books.entry(key.clone()).or_insert_with(fresh);
        // A new version named another spreadsheet: start over there.
        if book.try_lock().is_ok_and(|b| b.home != *home) {
            *book = fresh();
        }
        book.clone()
    }

    pub async fn write(&self, key: &FormKey, rows: &[Pending]) -> Vec<Result<(), ApiError>> {
        let Some(form) = newest_form(rows).cloned() else {
            return Vec::new();
        };
        let home = match form.current().and_then(|v| v.sheets.as_ref()) {
            Some(sheets) => match &sheets.spreadsheet_id {
                Some(id) => Home::Named(id.clone()),
                None => Home::Created,
            },
            // The processor only queues forms with a sheets action.
            None => return rows.iter().map(|_| Ok(())).collect(),
        };
        let book = self.book(key, &home);
        let mut book = book.lock().await;
        let assignment = rows.iter().map(|p| p.assignment).max().unwrap_or(0);
        if book.stale || book.read_for.is_none_or(|read| read < assignment) {
            if let Err(error) = self.read_back(&mut book, key).await {
                return rows.iter().map(|_| Err(error.clone())).collect();
            }
            book.read_for = Some(assignment);
            book.stale = false;
        }
        let layout = Layout::of(&form);
        let mut results: Vec<Result<(), ApiError>> = rows.iter().map(|_| Ok(())).collect();
        let mut updates: Vec<usize> = Vec::new();
        let mut appends: Vec<usize> = Vec::new();
        for (i, pending) in rows.iter().enumerate() {
            let response = &pending.response;
            match book.index.get(&response.response_id) {
                Some(slot) if slot.revision >= response.revision => {
                    tracing::debug!(response_id = %response.response_id, revision = response.revision, "Row already in the sheet; skipped.")
                }
                Some(_) => updates.push(i),
                None => appends.push(i),
            }
        }
        self.update_rows(&mut book, &form, &layout, rows, &updates, &mut results)
            .await;
        self.append_rows(&mut book, key, &form, &layout, rows, &appends, &mut results)
            .await;
        results
    }

    /// Reads every part of the form back: its tab (added if missing), its header width and its
    /// response ids and revisions.
    async fn read_back(&self, book: &mut Book, key: &FormKey) -> Result<(), ApiError> {
        book.parts.clear();
        book.index.clear();
        let mut duplicates = 0usize;
        for number in 1.. {
            let id = match (&book.home, number) {
                (Home::Named(id), 1) => Some(id.clone()),
                _ => {
                    let entry_key = ledger_key(key, &book.home, number);
                    self.ledger.sync_key(&entry_key).await.map_err(|e| {
                        ApiError::Unavailable(format!("the ledger of spreadsheets: {e}"))
                    })?;
                    match self.ledger.get(&entry_key) {
                        Some(Entry::Done { detail, .. }) => Some(detail),
                        _ => None,
                    }
                }
            };
            let Some(id) = id else { break };
            let tabs = self.api.tabs(&id).await?;
            let (tab, other_cells) = match tabs.iter().find(|t| t.title == TAB) {
                Some(tab) => (
                    tab.clone(),
                    tabs.iter()
                        .filter(|t| t.title != TAB)
                        .map(|t| t.rows * t.columns)
                        .sum(),
                ),
                None => {
                    let others = tabs.iter().map(|t| t.rows * t.columns).sum();
                    (self.api.add_tab(&id, TAB, 4).await?, others)
                }
            };
            let mut read = self
                .api
                .batch_get(&id, &[format!("{TAB}!A:B"), format!("{TAB}!1:1")])
                .await?
                .into_iter();
            let ids = read.next().unwrap_or_default();
            let header = read.next().unwrap_or_default();
            let part = book.parts.len();
            for (i, cells) in ids.iter().enumerate().skip(1) {
                let Some(response_id) = cells
                    .first()
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                else {
                    continue;
                };
                let revision = cells.get(1).and_then(revision_of).unwrap_or(0);
                let slot = Slot {
                    part,
                    row: i as u64 + 1,
                    revision,
                };
                match book.index.get(response_id) {
                    Some(held) => {
                        duplicates += 1;
                        if held.revision < revision {
                            book.index.insert(response_id.to_owned(), slot);
                        }
                    }
                    None => {
                        book.index.insert(response_id.to_owned(), slot);
                    }
                }
            }
            book.parts.push(part_of(
                id,
                &tab,
                ids.len() as u64,
                other_cells,
                header.first().map_or(0, |h| h.len() as u64),
            ));
        }
        if duplicates > 0 {
            tracing::warn!(
                organisation = %key.organisation,
                form_id = %key.form_id,
                duplicates,
                "The sheet holds response ids more than once (written by two instances at once?); the highest revision is kept up to date."
            );
        }
        tracing::info!(
            organisation = %key.organisation,
            form_id = %key.form_id,
            parts = book.parts.len(),
            rows = book.index.len(),
            "Read the sheet back."
        );
        Ok(())
    }

    /// Rewrites rows in place with their newer revision, one `values.batchUpdate` per part and
    /// per ~2 MB.
    async fn update_rows(
        &self,
        book: &mut Book,
        _form: &Form,
        layout: &Layout,
        rows: &[Pending],
        updates: &[usize],
        results: &mut [Result<(), ApiError>],
    ) {
        let mut by_part: HashMap<usize, Vec<usize>> = HashMap::new();
        for &i in updates {
            if let Some(slot) = book.index.get(&rows[i].response.response_id) {
                by_part.entry(slot.part).or_default().push(i);
            }
        }
        for (part, indices) in by_part {
            let width = layout.width() as u64;
            if let Err(error) = self.fit_header(&mut book.parts[part], layout).await {
                for &i in &indices {
                    results[i] = Err(error.clone());
                }
                continue;
            }
            let columns = book.parts[part].grid_columns.min(width).max(1) as usize;
            let mut start = 0;
            while start < indices.len() {
                let mut data = Vec::new();
                let mut bytes = 0;
                let mut end = start;
                while end < indices.len() && (end == start || bytes < self.max_request_bytes) {
                    let i = indices[end];
                    let Some(slot) = book.index.get(&rows[i].response.response_id) else {
                        end += 1;
                        continue;
                    };
                    let mut cells = layout.row(&rows[i].response);
                    cells.truncate(columns);
                    bytes += row_bytes(&cells) + 40;
                    data.push((row_range(slot.row, columns as u64), vec![cells]));
                    end += 1;
                }
                let chunk = &indices[start..end];
                let spreadsheet_id = book.parts[part].spreadsheet_id.clone();
                match self.api.update_values(&spreadsheet_id, &data).await {
                    Ok(()) => {
                        for &i in chunk {
                            let response = &rows[i].response;
                            if let Some(slot) = book.index.get_mut(&response.response_id) {
                                slot.revision = response.revision;
                            }
                            tracing::debug!(response_id = %response.response_id, revision = response.revision, "Row updated in place.");
                        }
                    }
                    Err(error) => {
                        // Updates are idempotent: a retry rewrites the same cells.
                        for &i in chunk {
                            results[i] = Err(error.clone());
                        }
                    }
                }
                start = end;
            }
        }
    }

    /// Appends new rows to the last part, rolling over to a new part when it is full.
    #[allow(clippy::too_many_arguments)]
    async fn append_rows(
        &self,
        book: &mut Book,
        key: &FormKey,
        form: &Form,
        layout: &Layout,
        rows: &[Pending],
        appends: &[usize],
        results: &mut [Result<(), ApiError>],
    ) {
        let width = layout.width() as u64;
        let mut start = 0;
        while start < appends.len() {
            let outcome = self
                .append_chunk(book, key, form, layout, rows, &appends[start..], width)
                .await;
            match outcome {
                Ok(written) => start += written,
                Err(error) => {
                    for &i in &appends[start..] {
                        results[i] = Err(error.clone());
                    }
                    return;
                }
            }
        }
    }

    /// One append (or the preparation of a new part): how many of `pending` it wrote.
    #[allow(clippy::too_many_arguments)]
    async fn append_chunk(
        &self,
        book: &mut Book,
        key: &FormKey,
        form: &Form,
        layout: &Layout,
        rows: &[Pending],
        pending: &[usize],
        width: u64,
    ) -> Result<usize, ApiError> {
        let header_rows = |part: &Part| u64::from(part.rows == 0);
        let needs_new_part = match book.parts.last() {
            None => true,
            Some(part) => part.room(width, self.cell_limit) <= header_rows(part),
        };
        if needs_new_part {
            self.new_part(book, key, form, width).await?;
            if book
                .parts
                .last()
                .is_some_and(|p| p.room(width, self.cell_limit) <= 1)
            {
                return Err(ApiError::Rejected {
                    status: 0,
                    detail: format!(
                        "--sheets-cell-limit {} leaves no room for one row of {width} cells",
                        self.cell_limit
                    ),
                });
            }
            return Ok(0);
        }
        let Some(part_number) = book.parts.len().checked_sub(1) else {
            return Ok(0);
        };
        let part = &mut book.parts[part_number];
        if part.grid_columns < width {
            self.widen(part, width).await?;
            if part.full {
                return Ok(0);
            }
        }
        if part.rows > 0 && part.header_width < width {
            self.fit_header(part, layout).await?;
        }
        let room = part.room(width, self.cell_limit) - header_rows(part);
        let mut values: Vec<Vec<Value>> = Vec::new();
        if part.rows == 0 {
            values.push(layout.header());
        }
        let mut bytes = values.first().map_or(0, |h| row_bytes(h));
        let mut taken = 0usize;
        for &i in pending {
            if taken as u64 >= room || (taken > 0 && bytes >= self.max_request_bytes) {
                break;
            }
            let cells = layout.row(&rows[i].response);
            let size = row_bytes(&cells);
            if taken > 0 && bytes + size > self.max_request_bytes {
                break;
            }
            bytes += size;
            values.push(cells);
            taken += 1;
        }
        let refs: Vec<&[Value]> = values.iter().map(Vec::as_slice).collect();
        let range = format!("{TAB}!A1:{}1", column_letters(width));
        let spreadsheet_id = part.spreadsheet_id.clone();
        let expected = part.rows + 1;
        let appended = match self.api.append(&spreadsheet_id, &range, &refs).await {
            Ok(appended) => appended,
            Err(error) => {
                if error.is_ambiguous() || error.is_cell_limit() || error.is_grid_limit() {
                    // The rows may be there (or the accounting was off): read back first.
                    book.stale = true;
                }
                if error.is_cell_limit() {
                    part.full = true;
                    tracing::warn!(
                        organisation = %key.organisation,
                        form_id = %key.form_id,
                        spreadsheet_id,
                        "Google says the spreadsheet is at its cell limit; continuing in a new one."
                    );
                    return Err(ApiError::Throttled {
                        status: 400,
                        retry_after: None,
                        detail: error.to_string(),
                    });
                }
                if error.is_grid_limit() {
                    // Someone resized the tab: read its grid back and try again.
                    return Err(ApiError::Throttled {
                        status: 400,
                        retry_after: None,
                        detail: error.to_string(),
                    });
                }
                return Err(error);
            }
        };
        if appended.first_row != expected {
            tracing::warn!(
                organisation = %key.organisation,
                form_id = %key.form_id,
                spreadsheet_id,
                expected,
                landed = appended.first_row,
                "An append landed on an unexpected row (another writer?); reading the sheet back before the next write."
            );
            book.stale = true;
        }
        let part = &mut book.parts[part_number];
        part.rows = appended.first_row + appended.rows - 1;
        part.grid_rows += appended.rows;
        if part.header_width < width && values.len() > taken {
            part.header_width = width;
        }
        let first_data_row = appended.first_row + (values.len() - taken) as u64;
        for (k, &i) in pending[..taken].iter().enumerate() {
            let response = &rows[i].response;
            book.index.insert(
                response.response_id.clone(),
                Slot {
                    part: part_number,
                    row: first_data_row + k as u64,
                    revision: response.revision,
                },
            );
        }
        tracing::info!(
            organisation = %key.organisation,
            form_id = %key.form_id,
            spreadsheet_id,
            rows = taken,
            first_row = first_data_row,
            "Rows appended."
        );
        Ok(taken)
    }

    /// Widens the tab and rewrites the header when the layout has new columns.
    async fn fit_header(&self, part: &mut Part, layout: &Layout) -> Result<(), ApiError> {
        let width = layout.width() as u64;
        if part.header_width >= width || part.rows == 0 {
            return Ok(());
        }
        if part.grid_columns < width {
            self.widen(part, width).await?;
            if part.grid_columns < width {
                return Ok(());
            }
        }
        self.api
            .update_values(
                &part.spreadsheet_id,
                &[(row_range(1, width), vec![layout.header()])],
            )
            .await?;
        part.header_width = width;
        Ok(())
    }

    /// Widens the tab's grid to `width` columns (`appendDimension`), unless that would pass the
    /// cell limit: then the part is full, and its rows keep the columns there are.
    async fn widen(&self, part: &mut Part, width: u64) -> Result<(), ApiError> {
        if part.grid_columns >= width {
            return Ok(());
        }
        if part.other_cells + part.grid_rows * width > self.cell_limit {
            part.full = true;
            return Ok(());
        }
        self.api
            .widen(
                &part.spreadsheet_id,
                part.sheet_id,
                width - part.grid_columns,
            )
            .await?;
        part.grid_columns = width;
        Ok(())
    }

    /// Creates the next part, recording it in the ledger before (attempted) and after (done).
    async fn new_part(
        &self,
        book: &mut Book,
        key: &FormKey,
        form: &Form,
        width: u64,
    ) -> Result<(), ApiError> {
        let number = book.parts.len() + 1;
        let entry_key = ledger_key(key, &book.home, number);
        let title = part_title(form, &key.form_id, number);
        self.ledger
            .sync_key(&entry_key)
            .await
            .map_err(ledger_error)?;
        match self.ledger.get(&entry_key) {
            Some(Entry::Done { detail, .. }) => {
                // Another instance made it meanwhile: read everything back.
                tracing::info!(organisation = %key.organisation, form_id = %key.form_id, spreadsheet_id = %detail, number, "A newer part exists; reading it back.");
                book.stale = true;
                return Err(ApiError::Unavailable(
                    "the form's spreadsheets changed; reading them back".into(),
                ));
            }
            Some(Entry::Attempted { .. }) => {
                tracing::warn!(organisation = %key.organisation, form_id = %key.form_id, number, %title, "An earlier attempt to create this spreadsheet did not finish; an empty spreadsheet with this title may exist and can be deleted.");
            }
            None => {}
        }
        self.ledger
            .record(&entry_key, Entry::attempted(title.clone()))
            .await
            .map_err(ledger_error)?;
        let (id, tab) = self.api.create(&title, TAB, width).await?;
        self.ledger
            .record(&entry_key, Entry::done(id.clone()))
            .await
            .map_err(ledger_error)?;
        tracing::info!(organisation = %key.organisation, form_id = %key.form_id, spreadsheet_id = %id, number, %title, "Created a spreadsheet for the form.");
        book.parts.push(part_of(id, &tab, 0, 0, 0));
        Ok(())
    }
}

fn ledger_error(error: formstream_runtime::LedgerError) -> ApiError {
    ApiError::Unavailable(format!("the ledger of spreadsheets: {error}"))
}

fn part_of(
    spreadsheet_id: String,
    tab: &Tab,
    rows: u64,
    other_cells: u64,
    header_width: u64,
) -> Part {
    Part {
        spreadsheet_id,
        sheet_id: tab.sheet_id,
        rows,
        grid_rows: tab.rows.max(rows),
        grid_columns: tab.columns,
        other_cells,
        header_width,
        full: false,
    }
}

/// `responses!A<row>:<last column><row>`.
fn row_range(row: u64, width: u64) -> String {
    format!("{TAB}!A{row}:{}{row}", column_letters(width.max(1)))
}

fn revision_of(value: &Value) -> Option<i32> {
    match value {
        Value::Number(n) => n.as_f64().map(|f| f as i32),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// The ledger key of part `number` of a form's chain from `home`:
/// `sheets/<organisation>/<form id>/created/part/<n>` for the spreadsheets the exporter creates,
/// so that every created spreadsheet is recorded with the organisation it belongs to, and two
/// organisations' forms of the same id never continue in each other's.
fn ledger_key(form: &FormKey, home: &Home, number: usize) -> String {
    match home {
        Home::Named(id) => format!("sheets/{form}/{id}/part/{number}"),
        Home::Created => format!("sheets/{form}/created/part/{number}"),
    }
}

/// The title of a part the exporter creates: predictable from the form, so that people find it.
pub fn part_title(form: &Form, form_id: &str, number: usize) -> String {
    let title = form.current().map_or("Responses", |v| v.title.as_str());
    if number == 1 {
        format!("{title} (formstream {form_id})")
    } else {
        format!("{title} (formstream {form_id}, part {number})")
    }
}
